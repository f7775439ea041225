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
 */
#include "postgres.h"

#include "miscadmin.h"
#include "port/pg_bitutils.h"
#include "utils/memutils.h"

#include "userset.h"

#define IDSET_INITIAL_CAPACITY 16

/* Allocate zeroed arrays; huge allocations are allowed, big sets are real. */
static void *
AllocZero(MemoryContext mcxt, Size size)
{
	return MemoryContextAllocExtended(mcxt, size, MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
}

/* Give the hash table a fresh, empty array of the given capacity. */
static void
ResetSlots(IdSet *set, uint64 capacity)
{
	set->capacity = capacity;
	set->grow_at = capacity * 7 / 10;
	set->used = 0;
	set->slots = AllocZero(set->mcxt, capacity * sizeof(uint64));
	if (set->counting)
		set->counts = AllocZero(set->mcxt, capacity * sizeof(int64));
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

/* Set one bit of a bitmap, counting it if it was clear. */
static inline void
SetBit(uint64 *bitmap, uint64 nbits, uint64 off, uint64 *count)
{
	uint64		bit = UINT64CONST(1) << (off & 63);

	if (off >= nbits)
		elog(ERROR, "userset bitmap offset " UINT64_FORMAT " out of range", off);
	if ((bitmap[off >> 6] & bit) == 0)
	{
		bitmap[off >> 6] |= bit;
		(*count)++;
	}
}

/*
 * Move every member into one bitmap of nbits starting at key lo (rounded
 * down to a multiple of 64); the caller has checked that it covers them.
 * The old bitmap's words are copied as they are (both bases are multiples
 * of 64); the table's members are set bit by bit, and the table restarts
 * empty.
 */
static void
Densify(IdSet *set, uint64 lo, uint64 nbits)
{
	uint64		base = lo & ~UINT64CONST(63);
	uint64	   *bitmap;
	uint64		count;
	uint64		i;

	Assert(nbits % 64 == 0);
	bitmap = AllocZero(set->mcxt, nbits / 8);
	count = set->nbitmap;
	if (set->bitmap)
	{
		Assert(set->base >= base && set->base - base + set->nbits <= nbits);
		memcpy(bitmap + (set->base - base) / 64, set->bitmap, set->nbits / 8);
		pfree(set->bitmap);
	}
	for (i = 0; i < set->capacity; i++)
		if (set->slots[i] != 0)
			SetBit(bitmap, nbits, IdSetKey((int64) set->slots[i]) - base, &count);
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
 * The bitmap at least doubles each time, so rebuilding stays linear
 * overall, and gets 25% room above the largest id (ids tend to grow).
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
	uint64		i;

	for (i = 0; i < set->capacity; i++)
	{
		if (set->slots[i] != 0)
		{
			uint64		key = IdSetKey((int64) set->slots[i]);

			lo = Min(lo, key);
			hi = Max(hi, key);
		}
	}
	if (set->bitmap)
	{
		lo = Min(lo, set->base);
		hi = Max(hi, set->base + set->nbits - 1);
	}
	if (lo > hi || members > PG_UINT64_MAX / 128)
		return false;
	limit = members * 128;
	span = hi - lo + 1;
	if (span + 128 > limit)
		return false;
	/* at least double, with room on the side the ids are growing towards */
	want = Min(Max(span + span / 4, set->nbits * 2), limit);
	if (set->bitmap && lo < set->base)
		base = Min(lo, want - 64 > hi ? 0 : hi - (want - 64));
	else
		base = lo;
	base &= ~UINT64CONST(63);
	want = Min(want, PG_UINT64_MAX - base);
	Densify(set, base, TYPEALIGN64(64, Max(want, hi - base + 1)));
	return true;
}

/* Double the table and re-insert every member, or turn into a bitmap. */
void
IdSetGrow(IdSet *set)
{
	uint64	   *old_slots = set->slots;
	int64	   *old_counts = set->counts;
	uint64		old_capacity = set->capacity;
	uint64		mask;
	uint64		i;

	if (!set->counting && TryDensify(set))
		return;

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

		if (member == 0)
			continue;
		if ((i & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
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

/* Add count occurrences of member (the set must keep counts). */
void
IdSetAddCount(IdSet *set, int64 member, int64 count)
{
	uint64		mask;
	uint64		i;

	Assert(set->counts != NULL && set->bitmap == NULL);
	if (member == 0)
	{
		set->has_zero = true;
		set->zero_count += count;
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
	set->counts[i] += count;
}

/* Add every member of a stored userset (once each, even to a counting set). */
void
IdSetAddUserset(IdSet *set, const Userset *members)
{
	UsersetReader reader;
	int64		member;
	uint32		n = 0;

	UsersetReaderInit(&reader, members);
	while (UsersetReaderNext(&reader, &member))
	{
		if ((++n & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
		if (set->counts)
			IdSetAddCount(set, member, 1);
		else
			IdSetAdd(set, member);
	}
}

void
IdSetIterInit(IdSetIter *iter, const IdSet *set)
{
	memset(iter, 0, sizeof(IdSetIter));
	iter->set = set;
}

/* Next member: 0 first (if present), then the table, then the bitmap. */
bool
IdSetIterNext(IdSetIter *iter, int64 *member)
{
	const IdSet *set = iter->set;

	switch (iter->phase)
	{
		case 0:
			iter->phase = 1;
			if (set->has_zero)
			{
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

/* All members, unsorted, in a palloc'd array (current context). */
int64 *
IdSetMembers(const IdSet *set, uint64 *count)
{
	int64	   *members;
	uint64		n = 0;
	IdSetIter	iter;

	members = palloc_extended(Max(IdSetCardinality(set), 1) * sizeof(int64),
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
