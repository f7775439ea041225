/*
 * userset.c
 *	  The userset type: an exact, compact set of 64-bit member ids.
 *
 * Text form is '{3,17,42}' (any order and duplicates accepted on input,
 * always sorted and unique on output).  Binary form is a version byte, a
 * member count and the members as int8, strictly ascending.
 *
 * A set is refused when it is built if its text or binary form would
 * exceed USERSET_MAX_FORM_SIZE, so that every value that can be stored can
 * also be output, copied, dumped and restored (with room for the rest of
 * its row in COPY's 1 GB line).
 */
#include "postgres.h"

#include <ctype.h>
#include <limits.h>

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/shmem.h"		/* add_size, mul_size */
#include "lib/stringinfo.h"
#include "libpq/pqformat.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "userset.h"
#include "varint.h"

PG_MODULE_MAGIC;

/* Largest text or binary form of a userset: half of what one value may be. */
#define USERSET_MAX_FORM_SIZE ((uint64) MaxAllocSize / 2)

/* The error every reader raises for bytes that cannot be a userset. */
#define CorruptUserset(...) \
	ereport(ERROR, \
			(errcode(ERRCODE_DATA_CORRUPTED), \
			 errmsg("corrupted userset value"), \
			 errdetail(__VA_ARGS__), \
			 errhint("Rebuild the value from its source rows with userset_agg().")))

/* Read one varint of a stored set, or report the set corrupted. */
static inline uint64
ReadVarint(UsersetReader *reader)
{
	uint64		v;

	if (!VarintRead(&reader->pos, reader->end, &v))
		CorruptUserset("A member's encoding is malformed or runs past the end of the value.");
	return v;
}

/* Check the fixed header of a stored userset. */
static void
CheckHeader(const Userset *set)
{
	if (VARSIZE(set) < USERSET_HEADER_SIZE)
		CorruptUserset("The value is shorter than its header.");
	if (set->version != USERSET_VERSION)
		CorruptUserset("Unknown format version %d.", set->version);
	if (set->flags != 0 || set->reserved != 0)
		CorruptUserset("Reserved header fields are not zero.");
}

/*
 * Start reading a stored userset: the header is checked here, the member
 * bytes as they are read.
 */
void
UsersetReaderInit(UsersetReader *reader, const Userset *set)
{
	CheckHeader(set);
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
	members = palloc_extended(mul_size(Max(set->count, 1), sizeof(int64)),
							  MCXT_ALLOC_HUGE);
	while (UsersetReaderNext(&reader, &members[n]))
	{
		if ((++n & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
	}
	*count = n;
	return members;
}

/* Number of characters of v in decimal, a minus sign included. */
static inline int
DecimalLength(int64 v)
{
	uint64		u = v < 0 ? -(uint64) v : (uint64) v;
	int			len = v < 0 ? 2 : 1;

	while (u >= 10)
	{
		u /= 10;
		len++;
	}
	return len;
}

/*
 * Encode strictly ascending members as a new userset, refusing one whose
 * stored, text or binary form would be too large (so that every set that
 * exists can also be output and restored).
 */
Userset *
UsersetFromSorted(const int64 *members, uint64 count)
{
	uint64		size = USERSET_HEADER_SIZE;
	uint64		text_size = 2;
	uint64		binary_size = 5;
	Userset    *set;
	uint8	   *out;
	uint64		i;

	if (count > (USERSET_MAX_FORM_SIZE - binary_size) / 8 || count > PG_UINT32_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("userset would have too many members"),
				 errdetail("The set has " UINT64_FORMAT " members; its binary form allows at most " UINT64_FORMAT ".",
						   count, (USERSET_MAX_FORM_SIZE - 5) / 8),
				 errhint("Split the set, for example by client or by period.")));
	binary_size += count * 8;

	for (i = 0; i < count; i++)
	{
		size += VarintSize(i == 0 ? ZigZag(members[0])
						   : (uint64) members[i] - (uint64) members[i - 1] - 1);
		text_size += DecimalLength(members[i]) + (i > 0 ? 1 : 0);
		if ((i & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
	}
	if (text_size > USERSET_MAX_FORM_SIZE || size > MaxAllocSize)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("userset would exceed the maximum value size"),
				 errdetail("The set has " UINT64_FORMAT " members, whose text form needs " UINT64_FORMAT " bytes; at most " UINT64_FORMAT " are allowed.",
						   count, text_size, USERSET_MAX_FORM_SIZE),
				 errhint("Split the set, for example by client or by period.")));

	set = palloc((Size) size);
	SET_VARSIZE(set, size);
	set->version = USERSET_VERSION;
	set->flags = 0;
	set->reserved = 0;
	set->count = (uint32) count;
	out = set->data;
	for (i = 0; i < count; i++)
		out = VarintWrite(out, i == 0 ? ZigZag(members[0])
						  : (uint64) members[i] - (uint64) members[i - 1] - 1);
	if (out != (uint8 *) set + size)
		elog(ERROR, "userset encoding size mismatch");
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

	/* input already in order (every text or binary form is) skips the sort */
	for (i = 1; i < count && members[i - 1] <= members[i]; i++)
	{
		if ((i & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
	}
	if (i < count)
		qsort(members, count, sizeof(int64), CompareInt64);
	CHECK_FOR_INTERRUPTS();
	for (i = 0; i < count; i++)
	{
		if (n == 0 || members[i] != members[n - 1])
			members[n++] = members[i];
		if ((i & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
	}
	return UsersetFromSorted(members, n);
}

/*
 * mspbill's own 64-bit hash of bytes: FNV-1a 64 (offset basis
 * 0xcbf29ce484222325, prime 0x100000001b3) over the bytes in order, then
 * MurmurHash3's fmix64 finalizer to spread the bits.  It reads one byte at
 * a time, so it is the same on every machine whatever its byte order, and
 * it is ours, so no server upgrade changes it: a set of text ids dumped on
 * one machine keeps matching the ids hashed on another.
 */
uint64
UsersetHashBytes(const uint8 *bytes, Size len)
{
	uint64		h = UINT64CONST(0xcbf29ce484222325);
	Size		i;

	for (i = 0; i < len; i++)
	{
		h ^= bytes[i];
		h *= UINT64CONST(0x100000001b3);
	}
	h ^= h >> 33;
	h *= UINT64CONST(0xff51afd7ed558ccd);
	h ^= h >> 33;
	h *= UINT64CONST(0xc4ceb9fe1a85ec53);
	h ^= h >> 33;
	return h;
}

/* The documented 64-bit id of a text member: the hash of its bytes. */
int64
UsersetHashText(const text *t)
{
	return (int64) UsersetHashBytes((const uint8 *) VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
}

/*
 * Input errors are soft on PostgreSQL 16 and later (ereturn), so that
 * pg_input_is_valid() and COPY's error handling work; earlier servers
 * have no soft errors and raise them.
 */
#if PG_VERSION_NUM >= 160000
#define InputError(escontext, rest) ereturn(escontext, (Datum) 0, rest)
#else
#define InputError(escontext, rest) ereport(ERROR, rest)
#endif

/* Enough of the input to recognise it in a message, however long it is. */
#define INPUT_SHOWN 100
#define BadUsersetText(escontext, input, detail) \
	InputError(escontext, \
			   (errcode(ERRCODE_INVALID_TEXT_REPRESENTATION), \
				errmsg("invalid input syntax for type userset: \"%.*s%s\"", \
					   (int) Min(strlen(input), INPUT_SHOWN), input, \
					   strlen(input) > INPUT_SHOWN ? "..." : ""), \
				errdetail(detail), \
				errhint("A userset looks like {3,17,42}: bigint members in braces, separated by commas.")))

PG_FUNCTION_INFO_V1(userset_in);
/* Text input: '{1,2,3}'; order and duplicates do not matter. */
Datum
userset_in(PG_FUNCTION_ARGS)
{
	char	   *input = PG_GETARG_CSTRING(0);
#if PG_VERSION_NUM >= 160000
	Node	   *escontext = fcinfo->context;
#endif
	const char *p = input;
	int64	   *members;
	uint64		n = 0;
	uint64		cap = 16;

	members = palloc(cap * sizeof(int64));
	while (isspace((unsigned char) *p))
		p++;
	if (*p++ != '{')
		BadUsersetText(escontext, input, "Missing \"{\".");
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

			if ((n & 0xFFFF) == 0)
				CHECK_FOR_INTERRUPTS();
			while (isspace((unsigned char) *p))
				p++;
			if (!(isdigit((unsigned char) *p) || *p == '-' || *p == '+'))
				BadUsersetText(escontext, input, "Expected a bigint member.");
			errno = 0;
			v = strtoll(p, &end, 10);
			if (end == p)
				BadUsersetText(escontext, input, "Expected a bigint member.");
			if (errno == ERANGE || v < PG_INT64_MIN || v > PG_INT64_MAX)
				InputError(escontext,
						   (errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
							errmsg("userset member \"%.*s\" is out of range for type bigint",
								   (int) Min(end - p, INPUT_SHOWN), p),
							errhint("Members are bigint ids; hash text ids with userset_agg(text).")));
			if (n == cap)
			{
				cap *= 2;
				members = repalloc_huge(members, mul_size(cap, sizeof(int64)));
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
			BadUsersetText(escontext, input, "Expected \",\" or \"}\" after a member.");
		}
	}
	while (isspace((unsigned char) *p))
		p++;
	if (*p != '\0')
		BadUsersetText(escontext, input, "Junk after the closing \"}\".");

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
		if ((reader.left & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
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
	members = palloc_extended(mul_size(Max(count, 1), sizeof(int64)), MCXT_ALLOC_HUGE);
	for (i = 0; i < count; i++)
	{
		if ((i & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
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
	{
		pq_sendint64(&buf, member);
		if ((reader.left & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
	}
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
/*
 * Number of members: only the header is fetched (and decompressed), so a
 * large stored set costs no more than a small one.
 */
Datum
userset_cardinality(PG_FUNCTION_ARGS)
{
	Userset    *set = (Userset *) PG_DETOAST_DATUM_SLICE(PG_GETARG_DATUM(0), 0,
														 USERSET_HEADER_SIZE - VARHDRSZ);

	CheckHeader(set);
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
		if ((reader.left & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
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
	uint64		steps = 0;
	int64		x = 0;
	int64		y = 0;
	bool		hasx;
	bool		hasy;

	UsersetReaderInit(&ra, a);
	UsersetReaderInit(&rb, b);
	out = palloc_extended(mul_size(Max(add_size(a->count, b->count), 1), sizeof(int64)),
						  MCXT_ALLOC_HUGE);
	hasx = UsersetReaderNext(&ra, &x);
	hasy = UsersetReaderNext(&rb, &y);
	while (hasx || hasy)
	{
		if ((++steps & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
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

/* a | b, for the aggregates */
Userset *
UsersetUnion(Userset *a, Userset *b)
{
	return UsersetMerge(a, b, MERGE_UNION);
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
	members = palloc_extended(mul_size(Max(nelems, 1), sizeof(int64)), MCXT_ALLOC_HUGE);
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
	Datum	   *elems = palloc_extended(mul_size(Max(n, 1), sizeof(Datum)), MCXT_ALLOC_HUGE);
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
