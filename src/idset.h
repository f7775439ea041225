/*
 * idset.h
 *	  IdSet: the working set of member ids behind every counting aggregate.
 *
 * An open-addressing hash set of int64 (optionally with a count per
 * member) that grows in the aggregate's memory context, plus, for plain
 * sets whose ids turn out dense, a bitmap over one range of ids.  Ids
 * inside the bitmap's range live only in the bitmap, the rest only in the
 * hash, so the two never overlap.  Nothing here knows the stored userset
 * type: aggregates bridge the two (userset_agg.c).
 */
#ifndef MSPBILL_IDSET_H
#define MSPBILL_IDSET_H

#include "postgres.h"
#include "fmgr.h"

typedef struct IdSet
{
	MemoryContext mcxt;			/* where slots, counts and bitmap live */
	uint64	   *slots;			/* 0 marks an empty slot */
	int64	   *counts;			/* per-slot counts, or NULL for a plain set */
	bool		counting;		/* keeps counts (and never a bitmap) */
	uint64		capacity;		/* power of two */
	uint64		used;			/* occupied slots */
	uint64		grow_at;		/* grow when used reaches this */
	bool		has_zero;		/* member 0 lives outside slots and bitmap */
	int64		zero_count;
	uint64	   *bitmap;			/* bit i: the id whose key is base + i; or NULL */
	uint64		base;			/* key of the first id covered, a multiple of 64 */
	uint64		nbits;			/* ids covered, a multiple of 64 */
	uint64		nbitmap;		/* members in the bitmap */
} IdSet;

/* Iterates over every member of an IdSet, in no particular order. */
typedef struct IdSetIter
{
	const IdSet *set;
	int			phase;			/* 0: zero, 1: slots, 2: bitmap, 3: done */
	uint64		pos;			/* next slot or bitmap word */
	uint64		word;			/* bits of the current word not yet returned */
	uint64		wordbase;		/* bit index of the current word */
	uint64		slot;			/* slot of the last hash member returned */
	bool		at_zero;		/* the last member returned was 0 */
} IdSetIter;

extern IdSet *IdSetCreate(MemoryContext mcxt, bool with_counts);
extern void IdSetGrow(IdSet *set);
extern void IdSetAddCount(IdSet *set, int64 member, int64 count);
extern IdSet *IdSetMerge(IdSet *dst, IdSet *src);
extern int64 *IdSetMembers(const IdSet *set, uint64 *count);
extern void IdSetIterInit(IdSetIter *iter, const IdSet *set);
extern bool IdSetIterNext(IdSetIter *iter, int64 *member);
extern int64 IdSetIterCount(const IdSetIter *iter);
extern bytea *IdSetSerialize(const IdSet *set, int32 min_sets);
extern IdSet *IdSetDeserialize(bytea *bytes, bool with_counts, int32 *min_sets,
							   MemoryContext mcxt);

/*
 * An id's key: the same order as int64, as an unsigned number, so that
 * bitmap offsets never wrap around.
 */
static inline uint64
IdSetKey(int64 id)
{
	return (uint64) id ^ (UINT64CONST(1) << 63);
}

static inline int64
IdSetKeyToId(uint64 key)
{
	return (int64) (key ^ (UINT64CONST(1) << 63));
}

/* fmix64 from MurmurHash3: cheap, and spreads sequential ids well */
static inline uint64
IdSetHash(uint64 x)
{
	x ^= x >> 33;
	x *= UINT64CONST(0xff51afd7ed558ccd);
	x ^= x >> 33;
	x *= UINT64CONST(0xc4ceb9fe1a85ec53);
	x ^= x >> 33;
	return x;
}

/* Add one member; the hot path of every counting aggregate. */
static inline void
IdSetAdd(IdSet *set, int64 member)
{
	uint64		mask;
	uint64		i;

	if (member == 0)
	{
		set->has_zero = true;
		return;
	}
	if (set->bitmap)
	{
		uint64		off = IdSetKey(member) - set->base;

		if (off < set->nbits)
		{
			uint64		bit = UINT64CONST(1) << (off & 63);
			uint64	   *word = &set->bitmap[off >> 6];

			if ((*word & bit) == 0)
			{
				*word |= bit;
				set->nbitmap++;
			}
			return;
		}
	}
	if (set->used >= set->grow_at)
	{
		/* growing may turn the set into a bitmap: start over */
		IdSetGrow(set);
		IdSetAdd(set, member);
		return;
	}
	mask = set->capacity - 1;
	i = IdSetHash((uint64) member) & mask;
	for (;;)
	{
		uint64		cur = set->slots[i];

		if (cur == (uint64) member)
			return;
		if (cur == 0)
		{
			set->slots[i] = (uint64) member;
			set->used++;
			return;
		}
		i = (i + 1) & mask;
	}
}

static inline int64
IdSetCardinality(const IdSet *set)
{
	return (int64) (set->used + set->nbitmap) + (set->has_zero ? 1 : 0);
}

#endif							/* MSPBILL_IDSET_H */
