/*
 * idset.c
 *	  The working set of the counting aggregates: exact, and cheap for both
 *	  sparse and dense ids.
 *
 * Ids start in an open-addressing hash set (linear probing, power-of-two
 * table at most 70% full).  Whenever the table must grow, a plain set
 * checks whether a bitmap over the range of its ids would cost no more
 * memory than the grown table; if so, the ids move into the bitmap.  Real
 * person ids are serials, so a client's people usually end up as one
 * small bitmap that stays in cache, while hashed text ids stay in the
 * table.  Id 0 marks an empty slot, so member 0 is kept in a flag.
 *
 * Every operation of the set lives here, including its serialized form
 * for parallel workers; this file knows nothing of the stored userset.
 */
#include "postgres.h"

#if PG_VERSION_NUM >= 160000
#include "varatt.h"
#endif

#include "common/int.h"
#include "miscadmin.h"
#include "port/pg_bitutils.h"
#include "utils/memutils.h"

#include "idset.h"
#include "varint.h"

#define IDSET_INITIAL_CAPACITY 16

/* Serialized state: see IdSetSerialize. */
#define IDSET_SERIAL_VERSION 2
#define IDSET_SERIAL_HAS_ZERO 0x01
#define IDSET_SERIAL_COUNTS 0x02
#define IDSET_SERIAL_BITMAP 0x04
#define IDSET_SERIAL_FLAGS 0x07

/*
 * Bytes for n elements of elem_size, refused (not wrapped) when beyond
 * what one allocation may hold, also where Size is 32 bits.
 */
static Size
ArrayBytes(uint64 n, Size elem_size)
{
	if (n > MaxAllocHugeSize / elem_size)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many distinct ids in one set"),
				 errdetail("The set would need more than %zu bytes for " UINT64_FORMAT " entries.",
						   (Size) MaxAllocHugeSize, n),
				 errhint("Group the aggregate more finely, for example by client.")));
	return (Size) n * elem_size;
}

/* Allocate zeroed arrays; huge allocations are allowed, big sets are real. */
static void *
AllocZero(MemoryContext mcxt, uint64 n, Size elem_size)
{
	return MemoryContextAllocExtended(mcxt, ArrayBytes(n, elem_size),
									  MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
}

/* Give the hash table a fresh, empty array of the given capacity. */
static void
ResetSlots(IdSet *set, uint64 capacity)
{
	set->capacity = capacity;
	set->grow_at = capacity / 10 * 7 + (capacity % 10) * 7 / 10;
	set->used = 0;
	set->slots = AllocZero(set->mcxt, capacity, sizeof(uint64));
	if (set->counting)
		set->counts = AllocZero(set->mcxt, capacity, sizeof(int64));
}

/* Create an empty set in mcxt; with_counts keeps a count per member. */
IdSet *
IdSetCreate(MemoryContext mcxt, bool with_counts)
{
	IdSet	   *set = MemoryContextAllocZero(mcxt, sizeof(IdSet));

	set->mcxt = mcxt;
	set->counting = with_counts;
	ResetSlots(set, IDSET_INITIAL_CAPACITY);
	return set;
}

/*
 * Move every member into one bitmap of nbits starting at key base; the
 * caller has chosen them to cover every member and the old bitmap.  The
 * old bitmap's words are copied as they are (both bases are multiples of
 * 64); the table's members are set bit by bit, and the table restarts
 * empty.  The checks are cheap and keep a wrong range an error, never a
 * write outside the new bitmap.
 */
static void
Densify(IdSet *set, uint64 base, uint64 nbits)
{
	uint64	   *bitmap;
	uint64		count;
	uint64		i;

	if (nbits == 0 || nbits % 64 != 0 || base % 64 != 0 ||
		base > PG_UINT64_MAX - (nbits - 1))
		elog(ERROR, "userset bitmap range is invalid");
	if (set->bitmap &&
		(set->base < base || set->nbits > nbits || set->base - base > nbits - set->nbits))
		elog(ERROR, "userset bitmap does not cover its previous range");

	bitmap = AllocZero(set->mcxt, nbits / 64, sizeof(uint64));
	count = set->nbitmap;
	if (set->bitmap)
	{
		memcpy(bitmap + (set->base - base) / 64, set->bitmap,
			   ArrayBytes(set->nbits / 64, sizeof(uint64)));
		pfree(set->bitmap);
	}
	for (i = 0; i < set->capacity; i++)
	{
		uint64		off;
		uint64		bit;

		if (set->slots[i] == 0)
			continue;
		if ((i & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
		off = IdSetKey((int64) set->slots[i]) - base;
		if (off >= nbits)
			elog(ERROR, "userset bitmap offset " UINT64_FORMAT " out of range", off);
		bit = UINT64CONST(1) << (off & 63);
		if ((bitmap[off >> 6] & bit) == 0)
		{
			bitmap[off >> 6] |= bit;
			count++;
		}
	}
	pfree(set->slots);
	set->bitmap = bitmap;
	set->base = base;
	set->nbits = nbits;
	set->nbitmap = count;
	ResetSlots(set, IDSET_INITIAL_CAPACITY);
}

/*
 * A plain set becomes (or widens) a bitmap when its ids are dense enough:
 * at most 128 bits per member, i.e. no more memory than a half-full table.
 * An existing bitmap is only ever replaced by one at least twice its size,
 * so rebuilding stays linear overall whatever the spacing of the ids; until
 * the members justify that, new ids outside it stay in the table.  A new
 * bitmap gets 25% room on the side the ids are growing towards.
 *
 * Keys span the whole uint64 range, so hi - lo + 1 may not fit: every
 * step below is checked instead.
 */
static bool
TryDensify(IdSet *set)
{
	uint64		lo = PG_UINT64_MAX;
	uint64		hi = 0;
	uint64		members = set->used + set->nbitmap;
	uint64		limit;
	uint64		span;
	uint64		want;
	uint64		base;
	uint64		nbits;
	uint64		i;

	for (i = 0; i < set->capacity; i++)
	{
		if (set->slots[i] != 0)
		{
			uint64		key = IdSetKey((int64) set->slots[i]);

			lo = Min(lo, key);
			hi = Max(hi, key);
		}
		if ((i & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
	}
	if (set->bitmap)
	{
		lo = Min(lo, set->base);
		hi = Max(hi, set->base + (set->nbits - 1));
	}
	if (lo > hi)
		return false;
	if (pg_mul_u64_overflow(members, 128, &limit))
		limit = PG_UINT64_MAX;
	/* span + 128 > limit, without computing a span that may be 2^64 */
	if (limit <= 128 || hi - lo >= limit - 128)
		return false;
	span = hi - lo + 1;
	if (pg_add_u64_overflow(span, span / 4, &want))
		want = PG_UINT64_MAX;
	want = Min(want, limit);
	if (set->bitmap)
	{
		if (set->nbits > limit / 2)
			return false;		/* not yet enough members to double it */
		want = Max(want, set->nbits * 2);
	}

	/* growing downwards: the room goes below the ids */
	if (set->bitmap && lo < set->base)
		base = Min(lo, hi >= want - 1 ? hi - (want - 1) : 0);
	else
		base = lo;
	base &= ~UINT64CONST(63);
	if (hi - base >= PG_UINT64_MAX - 64)
		return false;
	nbits = Max(want, hi - base + 1);
	nbits = (nbits + 63) & ~UINT64CONST(63);
	/* keep the whole bitmap inside the key space */
	if (base > PG_UINT64_MAX - (nbits - 1))
		base = PG_UINT64_MAX - (nbits - 1);
	if (nbits / 64 > MaxAllocHugeSize / sizeof(uint64))
		return false;
	Densify(set, base, nbits);
	return true;
}

/* Double the table and re-insert every member. */
static void
GrowTable(IdSet *set)
{
	uint64	   *old_slots = set->slots;
	int64	   *old_counts = set->counts;
	uint64		old_capacity = set->capacity;
	uint64		mask;
	uint64		i;

	if (set->capacity >= (MaxAllocHugeSize / sizeof(uint64)) / 2)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many distinct ids in one set"),
				 errdetail("The set already holds " UINT64_FORMAT " ids.", set->used),
				 errhint("Group the aggregate more finely, for example by client.")));

	ResetSlots(set, old_capacity * 2);
	mask = set->capacity - 1;
	for (i = 0; i < old_capacity; i++)
	{
		uint64		member = old_slots[i];
		uint64		j;

		if ((i & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
		if (member == 0)
			continue;
		j = IdSetHash(member) & mask;
		while (set->slots[j] != 0)
			j = (j + 1) & mask;
		set->slots[j] = member;
		set->used++;
		if (old_counts)
			set->counts[j] = old_counts[i];
	}
	pfree(old_slots);
	if (old_counts)
		pfree(old_counts);
}

/* Make room in the table, or turn the set into a bitmap. */
void
IdSetGrow(IdSet *set)
{
	if (!set->counting && TryDensify(set))
		return;
	GrowTable(set);
}

/* Refuse a count that would not fit: only forged states can get there. */
static int64
AddCounts(int64 a, int64 b)
{
	int64		sum;

	if (pg_add_s64_overflow(a, b, &sum))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("userset member count is out of range for type bigint")));
	return sum;
}

/* Add count occurrences of member (the set must keep counts). */
void
IdSetAddCount(IdSet *set, int64 member, int64 count)
{
	uint64		mask;
	uint64		i;

	if (set->counts == NULL || set->bitmap != NULL)
		elog(ERROR, "IdSetAddCount on a set without counts");
	if (member == 0)
	{
		set->has_zero = true;
		set->zero_count = AddCounts(set->zero_count, count);
		return;
	}
	if (set->used >= set->grow_at)
		IdSetGrow(set);
	mask = set->capacity - 1;
	i = IdSetHash((uint64) member) & mask;
	while (set->slots[i] != 0 && set->slots[i] != (uint64) member)
		i = (i + 1) & mask;
	if (set->slots[i] == 0)
	{
		set->slots[i] = (uint64) member;
		set->used++;
	}
	set->counts[i] = AddCounts(set->counts[i], count);
}

/*
 * Fold one set into another (both plain or both counting) and return the
 * result.  When both live in the same memory, the smaller is folded into
 * the larger, whichever argument that is.
 */
IdSet *
IdSetMerge(IdSet *dst, IdSet *src)
{
	IdSetIter	iter;
	int64		member;
	uint64		n = 0;

	if (dst->counting != src->counting)
		elog(ERROR, "cannot merge a counting set with a plain one");
	if (src->mcxt == dst->mcxt && IdSetCardinality(src) > IdSetCardinality(dst))
	{
		IdSet	   *tmp = dst;

		dst = src;
		src = tmp;
	}

	/*
	 * The table's members come out in the order of their hash, which is
	 * also dst's hash: inserted into a smaller table they would pile up in
	 * one run of slots that grows with every member (quadratic probing
	 * time).  A table with room for both keeps them spread.
	 */
	while (dst->used + src->used >= dst->grow_at)
		GrowTable(dst);
	IdSetIterInit(&iter, src);
	while (IdSetIterNext(&iter, &member))
	{
		if ((++n & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
		if (dst->counting)
			IdSetAddCount(dst, member, IdSetIterCount(&iter));
		else
			IdSetAdd(dst, member);
	}
	return dst;
}

void
IdSetIterInit(IdSetIter *iter, const IdSet *set)
{
	memset(iter, 0, sizeof(IdSetIter));
	iter->set = set;
}

/*
 * Next member: 0 first (if present), then the table, then the bitmap
 * (whose members come out ascending).
 */
bool
IdSetIterNext(IdSetIter *iter, int64 *member)
{
	const IdSet *set = iter->set;

	iter->at_zero = false;
	switch (iter->phase)
	{
		case 0:
			iter->phase = 1;
			if (set->has_zero)
			{
				iter->at_zero = true;
				*member = 0;
				return true;
			}
			/* FALLTHROUGH */
		case 1:
			while (iter->pos < set->capacity)
			{
				uint64		slot = iter->pos++;

				if (set->slots[slot] != 0)
				{
					iter->slot = slot;
					*member = (int64) set->slots[slot];
					return true;
				}
			}
			iter->phase = 2;
			iter->pos = 0;
			/* FALLTHROUGH */
		case 2:
			while (iter->word == 0)
			{
				if (set->bitmap == NULL || iter->pos >= set->nbits / 64)
				{
					iter->phase = 3;
					return false;
				}
				iter->wordbase = iter->pos * 64;
				iter->word = set->bitmap[iter->pos++];
			}
			*member = IdSetKeyToId(set->base + iter->wordbase +
								   pg_rightmost_one_pos64(iter->word));
			iter->word &= iter->word - 1;
			return true;
		default:
			return false;
	}
}

/* How many times the member IdSetIterNext just returned was counted. */
int64
IdSetIterCount(const IdSetIter *iter)
{
	const IdSet *set = iter->set;

	if (!set->counting)
		return 1;
	if (iter->at_zero)
		return set->zero_count;
	return set->counts[iter->slot];
}

/* All members, unsorted, in a palloc'd array (current context). */
int64 *
IdSetMembers(const IdSet *set, uint64 *count)
{
	int64	   *members;
	uint64		n = 0;
	IdSetIter	iter;

	members = palloc_extended(ArrayBytes(Max(IdSetCardinality(set), 1), sizeof(int64)),
							  MCXT_ALLOC_HUGE);
	IdSetIterInit(&iter, set);
	while (IdSetIterNext(&iter, &members[n]))
	{
		if ((++n & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
	}
	*count = n;
	return members;
}

/* A table member and its count, for sorting before serialization. */
typedef struct CountedId
{
	int64		id;
	int64		count;
} CountedId;

static int
CompareCountedId(const void *a, const void *b)
{
	int64		x = ((const CountedId *) a)->id;
	int64		y = ((const CountedId *) b)->id;

	return (x > y) - (x < y);
}

/*
 * Walks the members of the serialized list in ascending order: the sorted
 * table members merged with the bitmap's members (when the bitmap is not
 * sent as raw words).  Member 0 is never in either.
 */
typedef struct ListCursor
{
	const CountedId *table;
	uint64		ntable;
	uint64		itable;
	const IdSet *bitmap_of;		/* NULL: no bitmap members in the list */
	uint64		wpos;
	uint64		word;
	uint64		wordbase;
} ListCursor;

static bool
ListNext(ListCursor *c, int64 *member, int64 *count)
{
	bool		has_b = false;
	int64		b = 0;

	if (c->bitmap_of)
	{
		const IdSet *set = c->bitmap_of;

		while (c->word == 0 && c->wpos < set->nbits / 64)
		{
			c->wordbase = c->wpos * 64;
			c->word = set->bitmap[c->wpos++];
		}
		if (c->word != 0)
		{
			has_b = true;
			b = IdSetKeyToId(set->base + c->wordbase + pg_rightmost_one_pos64(c->word));
		}
	}
	if (c->itable < c->ntable && (!has_b || c->table[c->itable].id < b))
	{
		*member = c->table[c->itable].id;
		*count = c->table[c->itable].count;
		c->itable++;
		return true;
	}
	if (!has_b)
		return false;
	c->word &= c->word - 1;
	*member = b;
	*count = 1;
	return true;
}

/* Write v big-endian, as pq_sendint64 would. */
static uint8 *
PutUint64(uint8 *out, uint64 v)
{
	int			i;

	for (i = 7; i >= 0; i--)
		*out++ = (uint8) (v >> (i * 8));
	return out;
}

static uint64
GetUint64(const uint8 *in)
{
	uint64		v = 0;
	int			i;

	for (i = 0; i < 8; i++)
		v = (v << 8) | in[i];
	return v;
}

/*
 * The serialized state, compact so that what one worker can hold can be
 * passed to the leader:
 *
 *	version byte (2), flags byte, threshold (int4, big-endian);
 *	with HAS_ZERO and COUNTS: the count of member 0 (varint);
 *	with BITMAP: the bitmap's first key (int8) and its word count (varint),
 *	  then the words (int8 each) -- dense ids at one bit each;
 *	the member list: its length (varint), then the members ascending, the
 *	  first as a zigzag varint and each next one as the varint of
 *	  (gap - 1), like a stored userset; with COUNTS each member is followed
 *	  by its count (varint).
 *
 * The bitmap goes as raw words only when that is smaller than listing its
 * members (more than one member per 8 bits); otherwise its members join
 * the list, where sparse ones cost a byte or two each.
 */
bytea *
IdSetSerialize(const IdSet *set, int32 min_sets)
{
	CountedId  *table;
	uint64		ntable = 0;
	uint64		nlist;
	uint64		first_word = 0;
	uint64		nwords = 0;
	bool		raw = false;
	uint64		size;
	ListCursor	cursor;
	int64		member;
	int64		count;
	int64		prev = 0;
	uint64		n;
	uint64		i;
	bytea	   *result;
	uint8	   *out;
	uint8		flags;

	/* the table's members, sorted */
	table = palloc_extended(ArrayBytes(Max(set->used, 1), sizeof(CountedId)), MCXT_ALLOC_HUGE);
	for (i = 0; i < set->capacity; i++)
	{
		if (set->slots[i] == 0)
			continue;
		table[ntable].id = (int64) set->slots[i];
		table[ntable].count = set->counts ? set->counts[i] : 1;
		ntable++;
	}
	if (ntable > 1)
		qsort(table, ntable, sizeof(CountedId), CompareCountedId);
	CHECK_FOR_INTERRUPTS();

	/* the bitmap's non-zero word range, sent raw if dense enough */
	if (set->bitmap && set->nbitmap > 0)
	{
		uint64		last = 0;
		bool		any = false;

		for (i = 0; i < set->nbits / 64; i++)
		{
			if (set->bitmap[i] != 0)
			{
				if (!any)
					first_word = i;
				last = i;
				any = true;
			}
		}
		nwords = any ? last - first_word + 1 : 0;
		raw = any && nwords * 8 <= set->nbitmap;
	}
	nlist = ntable + (raw ? 0 : set->nbitmap);

	/* measure, so that a state too big to pass is a clear error */
	flags = (set->has_zero ? IDSET_SERIAL_HAS_ZERO : 0) |
		(set->counting ? IDSET_SERIAL_COUNTS : 0) |
		(raw ? IDSET_SERIAL_BITMAP : 0);
	size = VARHDRSZ + 6;
	if (set->counting && set->has_zero)
		size += VarintSize((uint64) set->zero_count);
	if (raw)
		size += 8 + VarintSize(nwords) + nwords * 8;
	size += VarintSize(nlist);
	memset(&cursor, 0, sizeof(cursor));
	cursor.table = table;
	cursor.ntable = ntable;
	cursor.bitmap_of = (set->bitmap && !raw) ? set : NULL;
	for (n = 0; ListNext(&cursor, &member, &count); n++)
	{
		size += VarintSize(n == 0 ? ZigZag(member) : (uint64) member - (uint64) prev - 1);
		if (set->counting)
			size += VarintSize((uint64) count);
		prev = member;
		if ((n & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
	}
	if (n != nlist)
		elog(ERROR, "userset state lists " UINT64_FORMAT " members, not " UINT64_FORMAT, n, nlist);
	if (size > MaxAllocSize)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("userset aggregate state is too large to pass between parallel processes"),
				 errdetail("The state of " INT64_FORMAT " distinct ids needs " UINT64_FORMAT " bytes; at most 1 GB can be passed.",
						   IdSetCardinality(set), size),
				 errhint("Run the query without parallel workers (SET max_parallel_workers_per_gather = 0), or group it more finely.")));

	result = palloc((Size) size);
	SET_VARSIZE(result, size);
	out = (uint8 *) VARDATA(result);
	*out++ = IDSET_SERIAL_VERSION;
	*out++ = flags;
	*out++ = (uint8) ((uint32) min_sets >> 24);
	*out++ = (uint8) ((uint32) min_sets >> 16);
	*out++ = (uint8) ((uint32) min_sets >> 8);
	*out++ = (uint8) min_sets;
	if (set->counting && set->has_zero)
		out = VarintWrite(out, (uint64) set->zero_count);
	if (raw)
	{
		out = PutUint64(out, set->base + first_word * 64);
		out = VarintWrite(out, nwords);
		for (i = 0; i < nwords; i++)
			out = PutUint64(out, set->bitmap[first_word + i]);
	}
	out = VarintWrite(out, nlist);
	memset(&cursor, 0, sizeof(cursor));
	cursor.table = table;
	cursor.ntable = ntable;
	cursor.bitmap_of = (set->bitmap && !raw) ? set : NULL;
	for (n = 0; ListNext(&cursor, &member, &count); n++)
	{
		out = VarintWrite(out, n == 0 ? ZigZag(member) : (uint64) member - (uint64) prev - 1);
		if (set->counting)
			out = VarintWrite(out, (uint64) count);
		prev = member;
	}
	if (out != (uint8 *) result + size)
		elog(ERROR, "userset state size mismatch");
	pfree(table);
	return result;
}

/* Report a serialized state that cannot have come from IdSetSerialize. */
static void
BadSerialState(const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
			 errmsg("invalid serialized userset aggregate state"),
			 errdetail_internal("%s", detail)));
}

/* Read a varint of the state or report it malformed. */
static uint64
StateVarint(const uint8 **pos, const uint8 *end)
{
	uint64		v;

	if (!VarintRead(pos, end, &v))
		BadSerialState("A number's encoding is malformed or runs past the end.");
	return v;
}

/*
 * Rebuild an IdSet in mcxt from bytes made by IdSetSerialize, distrusting
 * every byte: lengths, ordering, ranges and counts are all checked.
 */
IdSet *
IdSetDeserialize(bytea *bytes, bool with_counts, int32 *min_sets,
				 MemoryContext mcxt)
{
	const uint8 *p = (const uint8 *) VARDATA_ANY(bytes);
	const uint8 *end = p + VARSIZE_ANY_EXHDR(bytes);
	IdSet	   *set;
	int			flags;
	uint64		nlist;
	uint64		i;
	int64		prev = 0;

	if (end - p < 6)
		BadSerialState("The state is shorter than its header.");
	if (p[0] != IDSET_SERIAL_VERSION)
		BadSerialState("Unknown state version.");
	flags = p[1];
	if ((flags & ~IDSET_SERIAL_FLAGS) != 0 ||
		((flags & IDSET_SERIAL_COUNTS) != 0) != with_counts ||
		(with_counts && (flags & IDSET_SERIAL_BITMAP) != 0))
		BadSerialState("Unknown or mismatched state flags.");
	*min_sets = (int32) (((uint32) p[2] << 24) | ((uint32) p[3] << 16) |
						 ((uint32) p[4] << 8) | (uint32) p[5]);
	p += 6;

	set = IdSetCreate(mcxt, with_counts);
	if (flags & IDSET_SERIAL_HAS_ZERO)
	{
		if (with_counts)
		{
			uint64		zero_count = StateVarint(&p, end);

			if (zero_count == 0 || zero_count > (uint64) PG_INT64_MAX)
				BadSerialState("The count of member 0 is out of range.");
			IdSetAddCount(set, 0, (int64) zero_count);
		}
		else
			IdSetAdd(set, 0);
	}
	if (flags & IDSET_SERIAL_BITMAP)
	{
		uint64		base;
		uint64		nwords;
		uint64		zero_off;

		if (end - p < 8)
			BadSerialState("The bitmap runs past the end of the state.");
		base = GetUint64(p);
		p += 8;
		nwords = StateVarint(&p, end);
		if (base % 64 != 0 || nwords == 0 || nwords > (uint64) (end - p) / 8 ||
			base > PG_UINT64_MAX - (nwords * 64 - 1))
			BadSerialState("The bitmap's range is invalid.");
		set->bitmap = AllocZero(mcxt, nwords, sizeof(uint64));
		set->base = base;
		set->nbits = nwords * 64;
		for (i = 0; i < nwords; i++)
		{
			set->bitmap[i] = GetUint64(p);
			p += 8;
			set->nbitmap += pg_popcount64(set->bitmap[i]);
		}
		/* member 0 travels as a flag, never as a bit */
		zero_off = IdSetKey(0) - base;
		if (zero_off < set->nbits &&
			(set->bitmap[zero_off >> 6] & (UINT64CONST(1) << (zero_off & 63))) != 0)
			BadSerialState("Member 0 appears in the bitmap.");
	}
	nlist = StateVarint(&p, end);
	if (nlist > (uint64) (end - p))
		BadSerialState("The member count does not match the state's length.");
	for (i = 0; i < nlist; i++)
	{
		uint64		v = StateVarint(&p, end);
		int64		member;

		if (i == 0)
			member = UnZigZag(v);
		else
		{
			/* gap - 1 is stored; the gap must keep us at or below INT64_MAX */
			if (v >= (uint64) PG_INT64_MAX - (uint64) prev)
				BadSerialState("A member exceeds the largest bigint.");
			member = (int64) ((uint64) prev + v + 1);
		}
		if (member == 0)
			BadSerialState("Member 0 appears in the member list.");
		if (with_counts)
		{
			uint64		count = StateVarint(&p, end);

			if (count == 0 || count > (uint64) PG_INT64_MAX)
				BadSerialState("A member has a count out of range.");
			IdSetAddCount(set, member, (int64) count);
		}
		else
			IdSetAdd(set, member);
		prev = member;
		if ((i & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
	}
	if (p != end)
		BadSerialState("Bytes follow the last member.");
	return set;
}
