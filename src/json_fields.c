/*
 * json_fields.c
 *	  msp_json_fields(doc text, keys text[]): the top-level values of a JSON
 *	  object for the given keys, in one pass, without building a jsonb.
 *
 * Event exports are JSON lines whose records are mostly large and mostly
 * of no interest to billing; the loaders need a handful of fields from
 * each.  This scanner validates the whole document (so a broken record is
 * still told apart from a good one) but copies out only the wanted values:
 * strings unescaped, numbers and true/false as written, null as NULL,
 * nested objects and arrays as their JSON text.  A document that is not a
 * JSON object gives NULL.
 */
#include "postgres.h"

#if PG_VERSION_NUM >= 160000
#include "varatt.h"
#endif

#include <ctype.h>

#include "catalog/pg_type.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/shmem.h"		/* add_size, mul_size */
#include "utils/array.h"
#include "utils/builtins.h"

typedef struct JsonScan
{
	const char *p;
	const char *end;
} JsonScan;

static bool ScanValue(JsonScan *s, int depth);

static inline void
SkipSpace(JsonScan *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
		s->p++;
}

static inline int
HexValue(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Read four hex digits of a \u escape. */
static bool
ReadHex4(JsonScan *s, pg_wchar *code)
{
	int			i;

	*code = 0;
	if (s->end - s->p < 4)
		return false;
	for (i = 0; i < 4; i++)
	{
		int			h = HexValue(s->p[i]);

		if (h < 0)
			return false;
		*code = (*code << 4) | h;
	}
	s->p += 4;
	return true;
}

/*
 * Scan a string (the opening quote is next).  With out != NULL, append its
 * unescaped UTF-8 text there.
 */
static bool
ScanString(JsonScan *s, StringInfo out)
{
	s->p++;						/* opening quote */
	while (s->p < s->end)
	{
		unsigned char c = (unsigned char) *s->p;

		if (c == '"')
		{
			s->p++;
			return true;
		}
		if (c < 0x20)
			return false;		/* control characters must be escaped */
		if (c != '\\')
		{
			const char *run = s->p;

			while (s->p < s->end && *s->p != '"' && *s->p != '\\' &&
				   (unsigned char) *s->p >= 0x20)
				s->p++;
			if (out)
				appendBinaryStringInfo(out, run, s->p - run);
			continue;
		}
		s->p++;
		if (s->p >= s->end)
			return false;
		c = (unsigned char) *s->p++;
		switch (c)
		{
			case '"':
			case '\\':
			case '/':
			case 'b':
			case 'f':
			case 'n':
			case 'r':
			case 't':
				if (out)
					appendStringInfoChar(out, c == 'b' ? '\b' : c == 'f' ? '\f' : c == 'n' ? '\n' :
										 c == 'r' ? '\r' : c == 't' ? '\t' : (char) c);
				break;
			case 'u':
				{
					pg_wchar	code;

					if (!ReadHex4(s, &code))
						return false;
					if (code >= 0xD800 && code <= 0xDBFF)
					{
						pg_wchar	low;

						/* a high surrogate must be followed by a low one */
						if (s->end - s->p < 2 || s->p[0] != '\\' || s->p[1] != 'u')
							return false;
						s->p += 2;
						if (!ReadHex4(s, &low) || low < 0xDC00 || low > 0xDFFF)
							return false;
						code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
					}
					else if (code >= 0xDC00 && code <= 0xDFFF)
						return false;
					if (code == 0)
						return false;	/* text cannot hold NUL */
					if (out)
					{
						char		buf[32];

						/* in the database's encoding, as the json type does */
						memset(buf, 0, sizeof(buf));
						pg_unicode_to_server(code, (unsigned char *) buf);
						appendStringInfoString(out, buf);
					}
					break;
				}
			default:
				return false;
		}
	}
	return false;
}

/* Scan a number as JSON defines it. */
static bool
ScanNumber(JsonScan *s)
{
	const char *start;

	if (s->p < s->end && *s->p == '-')
		s->p++;
	if (s->p >= s->end)
		return false;
	if (*s->p == '0')
		s->p++;
	else if (*s->p >= '1' && *s->p <= '9')
		while (s->p < s->end && isdigit((unsigned char) *s->p))
			s->p++;
	else
		return false;
	if (s->p < s->end && *s->p == '.')
	{
		s->p++;
		start = s->p;
		while (s->p < s->end && isdigit((unsigned char) *s->p))
			s->p++;
		if (s->p == start)
			return false;
	}
	if (s->p < s->end && (*s->p == 'e' || *s->p == 'E'))
	{
		s->p++;
		if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
			s->p++;
		start = s->p;
		while (s->p < s->end && isdigit((unsigned char) *s->p))
			s->p++;
		if (s->p == start)
			return false;
	}
	return true;
}

/* Scan a literal word such as true. */
static bool
ScanWord(JsonScan *s, const char *word)
{
	size_t		len = strlen(word);

	if ((size_t) (s->end - s->p) < len || memcmp(s->p, word, len) != 0)
		return false;
	s->p += len;
	return true;
}

/* Scan an object or array body after its opening bracket. */
static bool
ScanContainer(JsonScan *s, char close, int depth)
{
	bool		first = true;

	check_stack_depth();
	if (depth > 1000)
		return false;
	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		SkipSpace(s);
		if (s->p >= s->end)
			return false;
		if (*s->p == close && first)
		{
			s->p++;
			return true;
		}
		if (close == '}')
		{
			if (*s->p != '"' || !ScanString(s, NULL))
				return false;
			SkipSpace(s);
			if (s->p >= s->end || *s->p++ != ':')
				return false;
		}
		if (!ScanValue(s, depth + 1))
			return false;
		SkipSpace(s);
		if (s->p >= s->end)
			return false;
		if (*s->p == close)
		{
			s->p++;
			return true;
		}
		if (*s->p++ != ',')
			return false;
		first = false;
	}
}

/* Scan any value. */
static bool
ScanValue(JsonScan *s, int depth)
{
	SkipSpace(s);
	if (s->p >= s->end)
		return false;
	switch (*s->p)
	{
		case '"':
			return ScanString(s, NULL);
		case '{':
			s->p++;
			return ScanContainer(s, '}', depth);
		case '[':
			s->p++;
			return ScanContainer(s, ']', depth);
		case 't':
			return ScanWord(s, "true");
		case 'f':
			return ScanWord(s, "false");
		case 'n':
			return ScanWord(s, "null");
		default:
			return ScanNumber(s);
	}
}

/*
 * A requested key, sorted so that each key of the document is found by
 * binary search: keys x keys comparisons would be quadratic.
 */
typedef struct WantedKey
{
	const char *data;
	int			len;
	int			index;			/* position in the keys array */
} WantedKey;

/* Order by length, then bytes, then position (equal keys stay adjacent). */
static int
CompareWantedKey(const void *a, const void *b)
{
	const WantedKey *x = (const WantedKey *) a;
	const WantedKey *y = (const WantedKey *) b;
	int			c;

	if (x->len != y->len)
		return x->len < y->len ? -1 : 1;
	c = memcmp(x->data, y->data, x->len);
	if (c != 0)
		return c;
	return (x->index > y->index) - (x->index < y->index);
}

/* First requested key equal to key (by length and bytes), or nwanted. */
static int
FindWanted(const WantedKey *wanted, int nwanted, StringInfo key)
{
	int			lo = 0;
	int			hi = nwanted;

	while (lo < hi)
	{
		int			mid = lo + (hi - lo) / 2;
		const WantedKey *w = &wanted[mid];
		int			c;

		if (w->len != key->len)
			c = w->len < key->len ? -1 : 1;
		else
			c = memcmp(w->data, key->data, key->len);
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < nwanted && wanted[lo].len == key->len &&
		memcmp(wanted[lo].data, key->data, key->len) == 0)
		return lo;
	return nwanted;
}

PG_FUNCTION_INFO_V1(msp_json_fields);
/* The values of the wanted top-level keys; NULL for a non-object. */
Datum
msp_json_fields(PG_FUNCTION_ARGS)
{
	text	   *doc = PG_GETARG_TEXT_PP(0);
	ArrayType  *keys_arr = PG_GETARG_ARRAYTYPE_P(1);
	Datum	   *key_datums;
	bool	   *key_nulls;
	int			nkeys;
	Datum	   *values;
	bool	   *nulls;
	int			dims[1];
	int			lbs[1] = {1};
	JsonScan	s;
	StringInfoData key;
	WantedKey  *wanted_keys;
	int			nwanted = 0;
	const char **starts;
	const char **ends;
	bool		first = true;
	int			i;

	if (ARR_NDIM(keys_arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("msp_json_fields keys must be a one-dimensional array")));
	deconstruct_array(keys_arr, TEXTOID, -1, false, TYPALIGN_INT, &key_datums, &key_nulls, &nkeys);
	values = palloc0(mul_size(Max(nkeys, 1), sizeof(Datum)));
	nulls = palloc(mul_size(Max(nkeys, 1), sizeof(bool)));
	wanted_keys = palloc(mul_size(Max(nkeys, 1), sizeof(WantedKey)));
	starts = palloc0(mul_size(Max(nkeys, 1), sizeof(char *)));
	ends = palloc0(mul_size(Max(nkeys, 1), sizeof(char *)));
	for (i = 0; i < nkeys; i++)
	{
		nulls[i] = true;
		if (!key_nulls[i])
		{
			text	   *t = DatumGetTextPP(key_datums[i]);

			wanted_keys[nwanted].data = VARDATA_ANY(t);
			wanted_keys[nwanted].len = VARSIZE_ANY_EXHDR(t);
			wanted_keys[nwanted].index = i;
			nwanted++;
		}
	}
	if (nwanted > 1)
		qsort(wanted_keys, nwanted, sizeof(WantedKey), CompareWantedKey);

	s.p = VARDATA_ANY(doc);
	s.end = s.p + VARSIZE_ANY_EXHDR(doc);
	initStringInfo(&key);

	SkipSpace(&s);
	if (s.p >= s.end || *s.p++ != '{')
		PG_RETURN_NULL();
	for (;;)
	{
		int			wanted = -1;
		int			found;
		const char *value_start;

		CHECK_FOR_INTERRUPTS();
		SkipSpace(&s);
		if (s.p >= s.end)
			PG_RETURN_NULL();
		if (*s.p == '}' && first)
		{
			s.p++;
			break;
		}
		resetStringInfo(&key);
		if (*s.p != '"' || !ScanString(&s, &key))
			PG_RETURN_NULL();
		found = FindWanted(wanted_keys, nwanted, &key);
		if (found < nwanted)
			wanted = wanted_keys[found].index;	/* the first of the keys asking for it */
		SkipSpace(&s);
		if (s.p >= s.end || *s.p++ != ':')
			PG_RETURN_NULL();
		SkipSpace(&s);
		value_start = s.p;
		if (!ScanValue(&s, 1))
			PG_RETURN_NULL();
		/* only where it is: a key repeated a million times costs nothing */
		if (wanted >= 0)
		{
			starts[wanted] = value_start;
			ends[wanted] = s.p;
		}
		SkipSpace(&s);
		if (s.p >= s.end)
			PG_RETURN_NULL();
		if (*s.p == '}')
		{
			s.p++;
			break;
		}
		if (*s.p++ != ',')
			PG_RETURN_NULL();
		first = false;
	}
	SkipSpace(&s);
	if (s.p != s.end)
		PG_RETURN_NULL();		/* junk after the object */

	/* the last value of each wanted key, once, for every position asking */
	for (i = 0; i < nwanted; i++)
	{
		int			w = wanted_keys[i].index;
		int			first_of_group = i;

		while (first_of_group > 0 &&
			   wanted_keys[first_of_group - 1].len == wanted_keys[i].len &&
			   memcmp(wanted_keys[first_of_group - 1].data, wanted_keys[i].data,
					  wanted_keys[i].len) == 0)
			first_of_group--;
		if (first_of_group != i)
		{
			int			f = wanted_keys[first_of_group].index;

			values[w] = values[f];
			nulls[w] = nulls[f];
			continue;
		}
		if (starts[w] == NULL)
			continue;
		if (*starts[w] == '"')
		{
			JsonScan	v = {starts[w], ends[w]};
			StringInfoData str;

			initStringInfo(&str);
			if (!ScanString(&v, &str))
				elog(ERROR, "msp_json_fields: a string scanned once fails the second time");
			values[w] = PointerGetDatum(cstring_to_text_with_len(str.data, str.len));
			nulls[w] = false;
		}
		else if (!(ends[w] - starts[w] == 4 && memcmp(starts[w], "null", 4) == 0))
		{
			values[w] = PointerGetDatum(cstring_to_text_with_len(starts[w], ends[w] - starts[w]));
			nulls[w] = false;
		}
	}

	if (nkeys == 0)
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(TEXTOID));
	dims[0] = nkeys;
	PG_RETURN_ARRAYTYPE_P(construct_md_array(values, nulls, 1, dims, lbs, TEXTOID, -1, false,
											 TYPALIGN_INT));
}
