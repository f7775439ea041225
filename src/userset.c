/*
 * userset.c
 *	  The userset type: an exact, compact set of 64-bit member ids.
 *
 * Text form is '{3,17,42}' (any order and duplicates accepted on input,
 * always sorted and unique on output).  Binary form is a version byte, a
 * member count and the members as int8, strictly ascending.
 */
#include "postgres.h"

#include <ctype.h>
#include <limits.h>

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "libpq/pqformat.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "userset.h"

PG_MODULE_MAGIC;

/* Largest member count a stored userset may hold (bounded by varlena size). */
#define USERSET_MAX_MEMBERS ((uint64) (MaxAllocSize - USERSET_HEADER_SIZE))

/* Raise the error every reader uses for bytes that cannot be a userset. */
static void
CorruptUserset(const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("corrupted userset value"),
			 errdetail("%s", detail),
			 errhint("Rebuild the value from its source rows with userset_agg().")));
}

/* Read one LEB128 varint, refusing to run past the end or past 64 bits. */
static inline uint64
ReadVarint(UsersetReader *reader)
{
	uint64		result = 0;
	int			shift = 0;

	for (;;)
	{
		uint8		byte;

		if (reader->pos >= reader->end)
			CorruptUserset("A member's encoding runs past the end of the value.");
		byte = *reader->pos++;
		if (shift == 63 && (byte & 0x7E) != 0)
			CorruptUserset("A member's encoding exceeds 64 bits.");
		result |= ((uint64) (byte & 0x7F)) << shift;
		if ((byte & 0x80) == 0)
			return result;
		shift += 7;
		if (shift > 63)
			CorruptUserset("A member's encoding exceeds 64 bits.");
	}
}

/* Number of bytes WriteVarint will use for v. */
static inline int
VarintSize(uint64 v)
{
	int			size = 1;

	while (v >= 0x80)
	{
		v >>= 7;
		size++;
	}
	return size;
}

/* Write v as LEB128 and return the position after it. */
static inline uint8 *
WriteVarint(uint8 *out, uint64 v)
{
	while (v >= 0x80)
	{
		*out++ = (uint8) (v | 0x80);
		v >>= 7;
	}
	*out++ = (uint8) v;
	return out;
}

static inline uint64
ZigZag(int64 v)
{
	return ((uint64) v << 1) ^ (uint64) (v >> 63);
}

static inline int64
UnZigZag(uint64 v)
{
	return (int64) (v >> 1) ^ -(int64) (v & 1);
}

/*
 * Start reading a stored userset.  The header is checked here; the member
 * bytes are checked as they are read.
 */
void
UsersetReaderInit(UsersetReader *reader, const Userset *set)
{
	if (VARSIZE(set) < USERSET_HEADER_SIZE)
		CorruptUserset("The value is shorter than its header.");
	if (set->version != USERSET_VERSION)
		CorruptUserset(psprintf("Unknown format version %d.", set->version));
	if (set->flags != 0 || set->reserved != 0)
		CorruptUserset("Reserved header fields are not zero.");
	reader->pos = set->data;
	reader->end = (const uint8 *) set + VARSIZE(set);
	reader->left = set->count;
	reader->prev = 0;
	reader->started = false;
	if (set->count == 0 && reader->pos != reader->end)
		CorruptUserset("An empty set carries member bytes.");
}

/* Return the next member in ascending order, or false at the end. */
bool
UsersetReaderNext(UsersetReader *reader, int64 *member)
{
	uint64		v;

	if (reader->left == 0)
		return false;
	v = ReadVarint(reader);
	if (!reader->started)
	{
		reader->prev = UnZigZag(v);
		reader->started = true;
	}
	else
	{
		/* gap - 1 is stored; the gap must keep us at or below INT64_MAX */
		uint64		room = (uint64) PG_INT64_MAX - (uint64) reader->prev;

		if (v >= room)
			CorruptUserset("A member exceeds the largest bigint.");
		reader->prev = (int64) ((uint64) reader->prev + v + 1);
	}
	reader->left--;
	if (reader->left == 0 && reader->pos != reader->end)
		CorruptUserset("Bytes follow the last member.");
	*member = reader->prev;
	return true;
}

/* Decode every member into a palloc'd ascending array. */
int64 *
UsersetToArray(const Userset *set, uint32 *count)
{
	UsersetReader reader;
	int64	   *members;
	uint32		n = 0;

	UsersetReaderInit(&reader, set);
	members = palloc_extended(Max((Size) set->count, 1) * sizeof(int64),
							  MCXT_ALLOC_HUGE);
	while (UsersetReaderNext(&reader, &members[n]))
		n++;
	*count = n;
	return members;
}

/* Encode strictly ascending members as a new userset. */
Userset *
UsersetFromSorted(const int64 *members, uint64 count)
{
	Size		size = USERSET_HEADER_SIZE;
	Userset    *set;
	uint8	   *out;
	uint64		i;

	if (count > USERSET_MAX_MEMBERS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("userset would have too many members"),
				 errdetail("The set has " UINT64_FORMAT " members.", count),
				 errhint("Split the set, for example by client or by period.")));

	for (i = 0; i < count; i++)
	{
		size += VarintSize(i == 0 ? ZigZag(members[0])
						   : (uint64) members[i] - (uint64) members[i - 1] - 1);
		if (size > MaxAllocSize)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("userset would exceed the maximum value size"),
					 errdetail("The set has " UINT64_FORMAT " members.", count),
					 errhint("Split the set, for example by client or by period.")));
	}

	set = palloc(size);
	SET_VARSIZE(set, size);
	set->version = USERSET_VERSION;
	set->flags = 0;
	set->reserved = 0;
	set->count = (uint32) count;
	out = set->data;
	for (i = 0; i < count; i++)
		out = WriteVarint(out, i == 0 ? ZigZag(members[0])
						  : (uint64) members[i] - (uint64) members[i - 1] - 1);
	Assert(out == (uint8 *) set + size);
	return set;
}

/* qsort comparator for int64 */
static int
CompareInt64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/* Sort, drop duplicates (in place) and encode. */
Userset *
UsersetFromUnsorted(int64 *members, uint64 count)
{
	uint64		n = 0;
	uint64		i;

	if (count > 1)
		qsort(members, count, sizeof(int64), CompareInt64);
	for (i = 0; i < count; i++)
		if (n == 0 || members[i] != members[n - 1])
			members[n++] = members[i];
	return UsersetFromSorted(members, n);
}

/*
 * The documented 64-bit id of a text member: PostgreSQL's
 * hash_bytes_extended over the text's bytes, seed 0.
 */
int64
UsersetHashText(const text *t)
{
	return (int64) hash_bytes_extended((const unsigned char *) VARDATA_ANY(t),
									   VARSIZE_ANY_EXHDR(t), 0);
}

/* Report malformed text input for userset. */
static void
BadUsersetText(const char *input, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
			 errmsg("invalid input syntax for type userset: \"%s\"", input),
			 errdetail("%s", detail),
			 errhint("A userset looks like {3,17,42}: bigint members in braces, separated by commas.")));
}

PG_FUNCTION_INFO_V1(userset_in);
/* Text input: '{1,2,3}'; order and duplicates do not matter. */
Datum
userset_in(PG_FUNCTION_ARGS)
{
	char	   *input = PG_GETARG_CSTRING(0);
	const char *p = input;
	int64	   *members;
	uint64		n = 0;
	uint64		cap = 16;

	members = palloc(cap * sizeof(int64));
	while (isspace((unsigned char) *p))
		p++;
	if (*p++ != '{')
		BadUsersetText(input, "Missing \"{\".");
	while (isspace((unsigned char) *p))
		p++;
	if (*p == '}')
		p++;
	else
	{
		for (;;)
		{
			char	   *end;
			long long	v;

			while (isspace((unsigned char) *p))
				p++;
			if (!(isdigit((unsigned char) *p) || *p == '-' || *p == '+'))
				BadUsersetText(input, "Expected a bigint member.");
			errno = 0;
			v = strtoll(p, &end, 10);
			if (end == p)
				BadUsersetText(input, "Expected a bigint member.");
			if (errno == ERANGE || v < PG_INT64_MIN || v > PG_INT64_MAX)
				ereport(ERROR,
						(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
						 errmsg("userset member \"%.*s\" is out of range for type bigint",
								(int) (end - p), p),
						 errhint("Members are bigint ids; hash text ids with userset_agg(text).")));
			if (n == cap)
			{
				cap *= 2;
				members = repalloc_huge(members, cap * sizeof(int64));
			}
			members[n++] = (int64) v;
			p = end;
			while (isspace((unsigned char) *p))
				p++;
			if (*p == ',')
			{
				p++;
				continue;
			}
			if (*p == '}')
			{
				p++;
				break;
			}
			BadUsersetText(input, "Expected \",\" or \"}\" after a member.");
		}
	}
	while (isspace((unsigned char) *p))
		p++;
	if (*p != '\0')
		BadUsersetText(input, "Junk after the closing \"}\".");

	PG_RETURN_USERSET(UsersetFromUnsorted(members, n));
}

PG_FUNCTION_INFO_V1(userset_out);
/* Text output: members ascending, '{}' when empty. */
Datum
userset_out(PG_FUNCTION_ARGS)
{
	Userset    *set = PG_GETARG_USERSET(0);
	UsersetReader reader;
	StringInfoData buf;
	int64		member;
	bool		first = true;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	UsersetReaderInit(&reader, set);
	while (UsersetReaderNext(&reader, &member))
	{
		if (!first)
			appendStringInfoChar(&buf, ',');
		appendStringInfo(&buf, INT64_FORMAT, member);
		first = false;
	}
	appendStringInfoChar(&buf, '}');
	PG_RETURN_CSTRING(buf.data);
}

/* Binary input: version byte, int4 count, count int8 members ascending. */
static Userset *
UsersetRecv(StringInfo buf)
{
	int			version;
	int32		count;
	int64	   *members;
	int32		i;

	if (buf->len - buf->cursor < 5)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("invalid binary userset"),
				 errdetail("The value has %d bytes; at least 5 are needed.",
						   buf->len - buf->cursor)));
	version = pq_getmsgbyte(buf);
	if (version != USERSET_VERSION)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("invalid binary userset"),
				 errdetail("Unknown format version %d; this mspbill reads version %d.",
						   version, USERSET_VERSION),
				 errhint("Upgrade the mspbill extension on this server.")));
	count = pq_getmsgint(buf, 4);
	if (count < 0 || (int64) count * 8 != buf->len - buf->cursor)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("invalid binary userset"),
				 errdetail("The header announces %d members but %d bytes of members follow.",
						   count, buf->len - buf->cursor)));
	members = palloc_extended(Max(count, 1) * sizeof(int64), MCXT_ALLOC_HUGE);
	for (i = 0; i < count; i++)
	{
		members[i] = pq_getmsgint64(buf);
		if (i > 0 && members[i] <= members[i - 1])
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
					 errmsg("invalid binary userset"),
					 errdetail("Member %d is not greater than the member before it.", i + 1),
					 errhint("Send members sorted ascending, without duplicates.")));
	}
	return UsersetFromSorted(members, count);
}

PG_FUNCTION_INFO_V1(userset_recv);
/* The type's receive function. */
Datum
userset_recv(PG_FUNCTION_ARGS)
{
	PG_RETURN_USERSET(UsersetRecv((StringInfo) PG_GETARG_POINTER(0)));
}

PG_FUNCTION_INFO_V1(userset_from_binary);
/* The binary form (as userset_send writes it) back into a set, checked. */
Datum
userset_from_binary(PG_FUNCTION_ARGS)
{
	bytea	   *bytes = PG_GETARG_BYTEA_PP(0);
	StringInfoData buf;

	buf.data = VARDATA_ANY(bytes);
	buf.len = VARSIZE_ANY_EXHDR(bytes);
	buf.maxlen = buf.len;
	buf.cursor = 0;
	PG_RETURN_USERSET(UsersetRecv(&buf));
}

PG_FUNCTION_INFO_V1(userset_send);
/* Binary output, the mirror of userset_recv. */
Datum
userset_send(PG_FUNCTION_ARGS)
{
	Userset    *set = PG_GETARG_USERSET(0);
	UsersetReader reader;
	StringInfoData buf;
	int64		member;

	pq_begintypsend(&buf);
	pq_sendbyte(&buf, USERSET_VERSION);
	pq_sendint32(&buf, set->count);
	UsersetReaderInit(&reader, set);
	while (UsersetReaderNext(&reader, &member))
		pq_sendint64(&buf, member);
	PG_RETURN_BYTEA_P(pq_endtypsend(&buf));
}

/* Equality by bytes: the encoding is canonical, so this is set equality. */
static bool
UsersetEqual(Userset *a, Userset *b)
{
	UsersetReader ra;
	UsersetReader rb;

	/* the readers validate both headers before we trust the bytes */
	UsersetReaderInit(&ra, a);
	UsersetReaderInit(&rb, b);
	return VARSIZE(a) == VARSIZE(b) &&
		memcmp(a->data, b->data, VARSIZE(a) - USERSET_HEADER_SIZE) == 0 &&
		a->count == b->count;
}

PG_FUNCTION_INFO_V1(userset_eq);
/* userset = userset */
Datum
userset_eq(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(UsersetEqual(PG_GETARG_USERSET(0), PG_GETARG_USERSET(1)));
}

PG_FUNCTION_INFO_V1(userset_ne);
/* userset <> userset */
Datum
userset_ne(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(!UsersetEqual(PG_GETARG_USERSET(0), PG_GETARG_USERSET(1)));
}

PG_FUNCTION_INFO_V1(userset_cardinality);
/* Number of members: read from the header, no decoding. */
Datum
userset_cardinality(PG_FUNCTION_ARGS)
{
	Userset    *set = PG_GETARG_USERSET(0);
	UsersetReader reader;

	UsersetReaderInit(&reader, set);
	PG_RETURN_INT64((int64) set->count);
}

PG_FUNCTION_INFO_V1(userset_contains);
/* Is the id a member?  Stops at the first member not below it. */
Datum
userset_contains(PG_FUNCTION_ARGS)
{
	Userset    *set = PG_GETARG_USERSET(0);
	int64		wanted = PG_GETARG_INT64(1);
	UsersetReader reader;
	int64		member;

	UsersetReaderInit(&reader, set);
	while (UsersetReaderNext(&reader, &member))
	{
		if (member >= wanted)
			PG_RETURN_BOOL(member == wanted);
	}
	PG_RETURN_BOOL(false);
}

/* Set operations differ only in which side's unmatched members they keep. */
typedef enum MergeKind
{
	MERGE_UNION,
	MERGE_INTERSECT,
	MERGE_EXCEPT
} MergeKind;

/* Merge two sorted member lists according to kind. */
static Userset *
UsersetMerge(Userset *a, Userset *b, MergeKind kind)
{
	UsersetReader ra;
	UsersetReader rb;
	int64	   *out;
	uint64		n = 0;
	int64		x = 0;
	int64		y = 0;
	bool		hasx;
	bool		hasy;

	UsersetReaderInit(&ra, a);
	UsersetReaderInit(&rb, b);
	out = palloc_extended(Max((Size) a->count + b->count, 1) * sizeof(int64),
						  MCXT_ALLOC_HUGE);
	hasx = UsersetReaderNext(&ra, &x);
	hasy = UsersetReaderNext(&rb, &y);
	while (hasx || hasy)
	{
		if (hasx && (!hasy || x < y))
		{
			if (kind != MERGE_INTERSECT)
				out[n++] = x;
			hasx = UsersetReaderNext(&ra, &x);
		}
		else if (hasy && (!hasx || y < x))
		{
			if (kind == MERGE_UNION)
				out[n++] = y;
			hasy = UsersetReaderNext(&rb, &y);
		}
		else
		{
			if (kind != MERGE_EXCEPT)
				out[n++] = x;
			hasx = UsersetReaderNext(&ra, &x);
			hasy = UsersetReaderNext(&rb, &y);
		}
	}
	return UsersetFromSorted(out, n);
}

PG_FUNCTION_INFO_V1(userset_or);
/* a | b: members of either */
Datum
userset_or(PG_FUNCTION_ARGS)
{
	PG_RETURN_USERSET(UsersetMerge(PG_GETARG_USERSET(0), PG_GETARG_USERSET(1),
								   MERGE_UNION));
}

PG_FUNCTION_INFO_V1(userset_and);
/* a & b: members of both */
Datum
userset_and(PG_FUNCTION_ARGS)
{
	PG_RETURN_USERSET(UsersetMerge(PG_GETARG_USERSET(0), PG_GETARG_USERSET(1),
								   MERGE_INTERSECT));
}

PG_FUNCTION_INFO_V1(userset_minus);
/* a - b: members of a that are not in b */
Datum
userset_minus(PG_FUNCTION_ARGS)
{
	PG_RETURN_USERSET(UsersetMerge(PG_GETARG_USERSET(0), PG_GETARG_USERSET(1),
								   MERGE_EXCEPT));
}

PG_FUNCTION_INFO_V1(userset_from_array);
/* bigint[] -> userset; NULL elements are skipped like aggregates skip NULLs */
Datum
userset_from_array(PG_FUNCTION_ARGS)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(0);
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;
	int64	   *members;
	int			n = 0;
	int			i;

	deconstruct_array(arr, INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
					  TYPALIGN_DOUBLE, &elems, &nulls, &nelems);
	members = palloc_extended(Max(nelems, 1) * sizeof(int64), MCXT_ALLOC_HUGE);
	for (i = 0; i < nelems; i++)
		if (!nulls[i])
			members[n++] = DatumGetInt64(elems[i]);
	PG_RETURN_USERSET(UsersetFromUnsorted(members, n));
}

PG_FUNCTION_INFO_V1(userset_to_array);
/* userset -> bigint[], ascending */
Datum
userset_to_array(PG_FUNCTION_ARGS)
{
	Userset    *set = PG_GETARG_USERSET(0);
	uint32		n;
	int64	   *members = UsersetToArray(set, &n);
	Datum	   *elems = palloc_extended(Max(n, 1) * sizeof(Datum), MCXT_ALLOC_HUGE);
	uint32		i;

	for (i = 0; i < n; i++)
		elems[i] = Int64GetDatum(members[i]);
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, n, INT8OID, sizeof(int64),
										  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

PG_FUNCTION_INFO_V1(userset_members);
/* SETOF bigint, ascending; decodes lazily, one member per call. */
Datum
userset_members(PG_FUNCTION_ARGS)
{
	FuncCallContext *funcctx;
	UsersetReader *reader;
	int64		member;

	if (SRF_IS_FIRSTCALL())
	{
		MemoryContext oldcontext;

		funcctx = SRF_FIRSTCALL_INIT();
		oldcontext = MemoryContextSwitchTo(funcctx->multi_call_memory_ctx);
		reader = palloc(sizeof(UsersetReader));
		UsersetReaderInit(reader, PG_GETARG_USERSET(0));
		funcctx->user_fctx = reader;
		MemoryContextSwitchTo(oldcontext);
	}
	funcctx = SRF_PERCALL_SETUP();
	reader = (UsersetReader *) funcctx->user_fctx;
	if (UsersetReaderNext(reader, &member))
		SRF_RETURN_NEXT(funcctx, Int64GetDatum(member));
	SRF_RETURN_DONE(funcctx);
}

PG_FUNCTION_INFO_V1(userset_text_id);
/* The id a text member is counted under, so users can see the hashing. */
Datum
userset_text_id(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(UsersetHashText(PG_GETARG_TEXT_PP(0)));
}

PG_FUNCTION_INFO_V1(userset_hash);
/* Hash of the canonical bytes, consistent with userset_eq. */
Datum
userset_hash(PG_FUNCTION_ARGS)
{
	Userset    *set = PG_GETARG_USERSET(0);
	UsersetReader reader;

	UsersetReaderInit(&reader, set);
	return hash_any((const unsigned char *) set->data,
					VARSIZE(set) - USERSET_HEADER_SIZE);
}
