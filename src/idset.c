/*
 * idset.c
 *	  Open-addressing hash set of int64 ids, the working state of the
 *	  counting aggregates.
 *
 * Linear probing over a power-of-two table kept at most 70% full: at 10^6
 * distinct ids the table is 2^21 slots, 16 MB (24 MB while growing).  Id 0
 * marks an empty slot, so member 0 is kept in a flag beside the table.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/memutils.h"

#include "userset.h"

#define IDSET_INITIAL_CAPACITY 16

/* Allocate slot arrays; huge allocations are allowed, big sets are real. */
static void *
AllocSlots(MemoryContext mcxt, uint64 capacity, Size width)
{
	return MemoryContextAllocExtended(mcxt, capacity * width,
									  MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
}

/* Create an empty set in mcxt; with_counts keeps a count per member. */
IdSet *
IdSetCreate(MemoryContext mcxt, bool with_counts)
{
	IdSet	   *set = MemoryContextAllocZero(mcxt, sizeof(IdSet));

	set->mcxt = mcxt;
	set->capacity = IDSET_INITIAL_CAPACITY;
	set->grow_at = set->capacity * 7 / 10;
	set->slots = AllocSlots(mcxt, set->capacity, sizeof(uint64));
	if (with_counts)
		set->counts = AllocSlots(mcxt, set->capacity, sizeof(int64));
	return set;
}

/* Double the table and re-insert every member. */
void
IdSetGrow(IdSet *set)
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

	set->capacity *= 2;
	set->grow_at = set->capacity * 7 / 10;
	set->slots = AllocSlots(set->mcxt, set->capacity, sizeof(uint64));
	if (old_counts)
		set->counts = AllocSlots(set->mcxt, set->capacity, sizeof(int64));
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

	Assert(set->counts != NULL);
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

/* Add every member of a stored userset. */
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

/* All members, unsorted, in a palloc'd array (current context). */
int64 *
IdSetMembers(const IdSet *set, uint64 *count)
{
	int64	   *members;
	uint64		n = 0;
	uint64		i;

	members = palloc_extended(Max(IdSetCardinality(set), 1) * sizeof(int64),
							  MCXT_ALLOC_HUGE);
	if (set->has_zero)
		members[n++] = 0;
	for (i = 0; i < set->capacity; i++)
		if (set->slots[i] != 0)
			members[n++] = (int64) set->slots[i];
	*count = n;
	return members;
}
