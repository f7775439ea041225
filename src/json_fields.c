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
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/shmem.h"		/* add_size, mul_size */
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/tuplestore.h"

typedef struct JsonScan
{
	const char *p;
	const char *end;
	bool		too_deep;		/* failed on nesting, not on syntax */
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
	{
		s->too_deep = true;
		return false;
	}
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
	s.too_deep = false;
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
			JsonScan	v = {starts[w], ends[w], false};
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

/*
 * msp_json_records(lines text[]): the records of a JSON export whatever its
 * layout, from its lines in order: JSON lines (one object per line), a
 * saved Microsoft Graph response ({"value": [...], "@odata.nextLink": ...},
 * pretty-printed or on one line, several pages one after the other) or a
 * top-level array.  Each record comes with the line it starts on; a page's
 * records are the elements of its "value" array (an object with such an
 * array and no "id" is a page).  Text that does not parse is returned as
 * one bad record per broken document: from the line it starts on up to the
 * next line that starts a document in its first column ('{' or '['), so
 * that a broken JSON line costs only itself and a broken page only itself.
 */

/* The line (0-based) holding byte offset off: binary search of line starts. */
static int
LineOf(const int64 *starts, int nlines, int64 off)
{
	int			lo = 0;
	int			hi = nlines - 1;

	while (lo < hi)
	{
		int			mid = lo + (hi - lo + 1) / 2;

		if (starts[mid] <= off)
			lo = mid;
		else
			hi = mid - 1;
	}
	return lo;
}

/* One output row. */
static void
PutRecord(Tuplestorestate *ts, TupleDesc desc, int line, const char *p, size_t len, bool is_json)
{
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	values[0] = Int32GetDatum(line + 1);
	values[1] = PointerGetDatum(cstring_to_text_with_len(p, len));
	values[2] = BoolGetDatum(is_json);
	tuplestore_putvalues(ts, desc, values, nulls);
}

/*
 * Scan the object at s->p (its '{' next).  On success, page_start and
 * page_end delimit its "value" array when the object is a page.
 */
static bool
ScanTopObject(JsonScan *s, const char **page_start, const char **page_end)
{
	bool		first = true;
	bool		has_id = false;
	StringInfoData key;

	*page_start = *page_end = NULL;
	initStringInfo(&key);
	s->p++;
	for (;;)
	{
		const char *value_start;

		CHECK_FOR_INTERRUPTS();
		SkipSpace(s);
		if (s->p >= s->end)
			return false;
		if (*s->p == '}' && first)
		{
			s->p++;
			break;
		}
		resetStringInfo(&key);
		if (*s->p != '"' || !ScanString(s, &key))
			return false;
		SkipSpace(s);
		if (s->p >= s->end || *s->p++ != ':')
			return false;
		SkipSpace(s);
		value_start = s->p;
		if (!ScanValue(s, 1))
			return false;
		if (key.len == 2 && memcmp(key.data, "id", 2) == 0)
			has_id = true;
		else if (key.len == 5 && memcmp(key.data, "value", 5) == 0 && *value_start == '[')
		{
			*page_start = value_start;
			*page_end = s->p;
		}
		SkipSpace(s);
		if (s->p >= s->end)
			return false;
		if (*s->p == '}')
		{
			s->p++;
			break;
		}
		if (*s->p++ != ',')
			return false;
		first = false;
	}
	if (has_id)
		*page_start = *page_end = NULL;
	pfree(key.data);
	return true;
}

/* Emit each element of the (already validated) array [start, end). */
static void
PutElements(Tuplestorestate *ts, TupleDesc desc, const int64 *starts, int nlines, const char *buf,
			const char *start, const char *end)
{
	JsonScan	s = {start + 1, end, false};

	for (;;)
	{
		const char *elem;

		SkipSpace(&s);
		if (s.p >= s.end || *s.p == ']')
			return;
		elem = s.p;
		if (!ScanValue(&s, 1))
			elog(ERROR, "msp_json_records: an array scanned once fails the second time");
		PutRecord(ts, desc, LineOf(starts, nlines, elem - buf), elem, s.p - elem, true);
		SkipSpace(&s);
		if (s.p < s.end && *s.p == ',')
			s.p++;
	}
}

PG_FUNCTION_INFO_V1(msp_json_records);
/* The records of an export's lines; see above. */
Datum
msp_json_records(PG_FUNCTION_ARGS)
{
	ArrayType  *lines_arr = PG_GETARG_ARRAYTYPE_P(0);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Tuplestorestate *ts;
	TupleDesc	desc;
	MemoryContext oldcxt;
	Datum	   *line_datums;
	bool	   *line_nulls;
	int			nlines;
	int64	   *starts;
	StringInfoData buf;
	JsonScan	s;
	int			i;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		(rsinfo->allowedModes & SFRM_Materialize) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("msp_json_records must be called in FROM")));
	if (ARR_NDIM(lines_arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("msp_json_records lines must be a one-dimensional array")));
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "msp_json_records: return type must be a row type");

	oldcxt = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	desc = CreateTupleDescCopy(desc);
	ts = tuplestore_begin_heap(true, false, work_mem);
	MemoryContextSwitchTo(oldcxt);
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = ts;
	rsinfo->setDesc = desc;

	deconstruct_array(lines_arr, TEXTOID, -1, false, TYPALIGN_INT, &line_datums, &line_nulls, &nlines);
	if (nlines == 0)
		PG_RETURN_NULL();
	/* the lines joined by newlines, and where each starts */
	starts = palloc(mul_size(nlines, sizeof(int64)));
	initStringInfo(&buf);
	for (i = 0; i < nlines; i++)
	{
		starts[i] = buf.len;
		if (!line_nulls[i])
		{
			text	   *t = DatumGetTextPP(line_datums[i]);

			if ((Size) buf.len + VARSIZE_ANY_EXHDR(t) + 1 >= MaxAllocSize)
				ereport(ERROR,
						(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
						 errmsg("export too large to read at once"),
						 errdetail("The staged lines of one load exceed %zu bytes.", (Size) MaxAllocSize - 1),
						 errhint("Load the export in parts.")));
			appendBinaryStringInfo(&buf, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
		}
		appendStringInfoChar(&buf, '\n');
	}

	s.p = buf.data;
	s.end = buf.data + buf.len;
	s.too_deep = false;
	for (;;)
	{
		const char *doc;
		int			line;
		bool		ok;

		CHECK_FOR_INTERRUPTS();
		SkipSpace(&s);
		if (s.p >= s.end)
			break;
		doc = s.p;
		line = LineOf(starts, nlines, doc - buf.data);
		if (*s.p == '{')
		{
			const char *page_start;
			const char *page_end;

			ok = ScanTopObject(&s, &page_start, &page_end);
			if (ok && page_start != NULL)
				PutElements(ts, desc, starts, nlines, buf.data, page_start, page_end);
			else if (ok)
				PutRecord(ts, desc, line, doc, s.p - doc, true);
		}
		else if (*s.p == '[')
		{
			ok = ScanValue(&s, 0);
			if (ok)
				PutElements(ts, desc, starts, nlines, buf.data, doc, s.p);
		}
		else
			ok = false;
		if (!ok)
		{
			/*
			 * nesting too deep for this scanner is no syntax error: the
			 * caller's parser may say what it is
			 */
			bool		deep = s.too_deep;

			/* the broken document: up to the next line starting one */
			int			next = line + 1;

			while (next < nlines &&
				   buf.data[starts[next]] != '{' && buf.data[starts[next]] != '[')
				next++;
			s.p = next < nlines ? buf.data + starts[next] : s.end;
			PutRecord(ts, desc, line, doc, s.p - doc - 1, deep);
			s.too_deep = false;
		}
	}
	PG_RETURN_NULL();
}
