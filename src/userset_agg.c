/*
 * userset_agg.c
 *	  Exact counting aggregates: userset_agg, distinct_count, userset_union
 *	  and userset_at_least.
 *
 * userset_agg and distinct_count share one internal state (an IdSet) and
 * differ only in their final function.  Their states cross process
 * boundaries in parallel plans through serialize/deserialize, which treat
 * the bytes they receive as untrusted.  This file is the one bridge
 * between the working set (idset.c) and the stored type (userset.c).
 *
 * userset_union keeps the userset type itself as its state, so that Citus
 * can ship partial states between nodes as text.  To stay linear, that state
 * is an expanded object (an IdSet wearing a userset's clothes) which
 * nodeAgg keeps in place between rows and flattens only when it must.
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "libpq/pqformat.h"
#include "miscadmin.h"
#include "storage/shmem.h"		/* add_size, mul_size */
#include "utils/expandeddatum.h"
#include "utils/memutils.h"

#include "aggregate.h"
#include "idset.h"
#include "userset.h"

/* State of userset_at_least: the threshold travels with the counts. */
typedef struct AtLeastState
{
	int32		min_sets;
	IdSet	   *set;
} AtLeastState;

/* Add every member of a stored userset (once each, even to a counting set). */
static void
IdSetAddUserset(IdSet *set, const Userset *members)
{
	UsersetReader reader;
	int64		member;

	UsersetReaderInit(&reader, members);
	while (UsersetReaderNext(&reader, &member))
	{
		if ((reader.left & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
		if (set->counting)
			IdSetAddCount(set, member, 1);
		else
			IdSetAdd(set, member);
	}
}

PG_FUNCTION_INFO_V1(userset_agg_trans);
/* Transition for bigint members: NULLs are skipped, as COUNT(DISTINCT) does. */
Datum
userset_agg_trans(PG_FUNCTION_ARGS)
{
	IdSet	   *set = PG_ARGISNULL(0) ? NULL : (IdSet *) PG_GETARG_POINTER(0);

	if (set == NULL)
		set = IdSetCreate(AggregateContext(fcinfo, "userset_agg_trans"), false);
	if (!PG_ARGISNULL(1))
		IdSetAdd(set, PG_GETARG_INT64(1));
	PG_RETURN_POINTER(set);
}

PG_FUNCTION_INFO_V1(userset_agg_trans_text);
/* Transition for text members, counted under their documented 64-bit hash. */
Datum
userset_agg_trans_text(PG_FUNCTION_ARGS)
{
	IdSet	   *set = PG_ARGISNULL(0) ? NULL : (IdSet *) PG_GETARG_POINTER(0);

	if (set == NULL)
		set = IdSetCreate(AggregateContext(fcinfo, "userset_agg_trans_text"), false);
	if (!PG_ARGISNULL(1))
		IdSetAdd(set, UsersetHashText(PG_GETARG_TEXT_PP(1)));
	PG_RETURN_POINTER(set);
}

PG_FUNCTION_INFO_V1(userset_agg_combine);
/*
 * Combine two partial states; the result must live in the aggregate
 * context.  A first state that already lives there (deserialized states
 * do) is adopted as it is; one from another aggregate's memory, as in a
 * partitionwise plan, is copied, since that memory may be reset.
 */
Datum
userset_agg_combine(PG_FUNCTION_ARGS)
{
	MemoryContext aggcontext = AggregateContext(fcinfo, "userset_agg_combine");
	IdSet	   *dst = PG_ARGISNULL(0) ? NULL : (IdSet *) PG_GETARG_POINTER(0);
	IdSet	   *src = PG_ARGISNULL(1) ? NULL : (IdSet *) PG_GETARG_POINTER(1);

	if (src == NULL)
		PG_RETURN_POINTER(dst);
	if (dst == NULL)
	{
		if (src->mcxt == aggcontext)
			PG_RETURN_POINTER(src);
		dst = IdSetCreate(aggcontext, false);
	}
	PG_RETURN_POINTER(IdSetMerge(dst, src));
}

/* A threshold where there must be none, in the deserialized state's words. */
#define BadThreshold(detail) \
	ereport(ERROR, \
			(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION), \
			 errmsg("invalid serialized userset aggregate state"), \
			 errdetail(detail)))

PG_FUNCTION_INFO_V1(userset_agg_serialize);
/* internal -> bytea for parallel workers */
Datum
userset_agg_serialize(PG_FUNCTION_ARGS)
{
	PG_RETURN_BYTEA_P(IdSetSerialize((IdSet *) PG_GETARG_POINTER(0), 0));
}

PG_FUNCTION_INFO_V1(userset_agg_deserialize);
/* bytea -> internal, distrusting every byte */
Datum
userset_agg_deserialize(PG_FUNCTION_ARGS)
{
	MemoryContext aggcontext = AggregateContext(fcinfo, "userset_agg_deserialize");
	int32		min_sets;
	IdSet	   *set = IdSetDeserialize(PG_GETARG_BYTEA_PP(0), false, &min_sets,
									   aggcontext);

	if (min_sets != 0)
		BadThreshold("A plain set carries a threshold.");
	PG_RETURN_POINTER(set);
}

PG_FUNCTION_INFO_V1(userset_agg_final);
/* The set itself; no rows (or only NULLs) give the empty set. */
Datum
userset_agg_final(PG_FUNCTION_ARGS)
{
	IdSet	   *set = PG_ARGISNULL(0) ? NULL : (IdSet *) PG_GETARG_POINTER(0);
	uint64		n = 0;
	int64	   *members;

	if (set == NULL)
		PG_RETURN_USERSET(UsersetFromSorted(NULL, 0));
	members = IdSetMembers(set, &n);
	PG_RETURN_USERSET(UsersetFromUnsorted(members, n));
}

PG_FUNCTION_INFO_V1(distinct_count_final);
/* The number of distinct members; 0 for no rows, exactly like COUNT. */
Datum
distinct_count_final(PG_FUNCTION_ARGS)
{
	IdSet	   *set = PG_ARGISNULL(0) ? NULL : (IdSet *) PG_GETARG_POINTER(0);

	PG_RETURN_INT64(set ? IdSetCardinality(set) : 0);
}

/*
 * userset_union's state: an expanded userset.  The flat form is built on
 * demand and cached until the next member arrives.
 */
typedef struct UsersetAccum
{
	ExpandedObjectHeader hdr;
	IdSet	   *set;
	Userset    *flat;
} UsersetAccum;

/* Build (once) and measure the flat form. */
static Size
UsersetAccumFlatSize(ExpandedObjectHeader *eohptr)
{
	UsersetAccum *accum = (UsersetAccum *) eohptr;

	if (accum->flat == NULL)
	{
		MemoryContext oldcontext = MemoryContextSwitchTo(eohptr->eoh_context);
		uint64		n;
		int64	   *members = IdSetMembers(accum->set, &n);

		accum->flat = UsersetFromUnsorted(members, n);
		pfree(members);
		MemoryContextSwitchTo(oldcontext);
	}
	return VARSIZE(accum->flat);
}

/* Copy the cached flat form out. */
static void
UsersetAccumFlatten(ExpandedObjectHeader *eohptr, void *result, Size allocated_size)
{
	UsersetAccum *accum = (UsersetAccum *) eohptr;

	if (accum->flat == NULL || allocated_size != VARSIZE(accum->flat))
		elog(ERROR, "userset_union state flattened without its size");
	memcpy(result, accum->flat, allocated_size);
}

static const ExpandedObjectMethods UsersetAccumMethods = {
	UsersetAccumFlatSize,
	UsersetAccumFlatten
};

/* A new expanded state under aggcontext, so nodeAgg keeps it in place. */
static UsersetAccum *
UsersetAccumCreate(MemoryContext aggcontext)
{
	MemoryContext objcontext = AllocSetContextCreate(aggcontext,
													 "userset_union state",
													 ALLOCSET_SMALL_SIZES);
	UsersetAccum *accum = MemoryContextAllocZero(objcontext, sizeof(UsersetAccum));

	EOH_init_header(&accum->hdr, &UsersetAccumMethods, objcontext);
	accum->set = IdSetCreate(objcontext, false);
	return accum;
}

/* Is d our own read-write expanded state? */
static bool
IsUsersetAccum(Datum d)
{
	return VARATT_IS_EXTERNAL_EXPANDED_RW(DatumGetPointer(d)) &&
		DatumGetEOHP(d)->eoh_methods == &UsersetAccumMethods;
}

/*
 * Below this many members a group's union stays a flat userset, merged row
 * by row: an expanded state costs a memory context of its own, and with
 * hundreds of thousands of groups nodeAgg's memory checks walk them all
 * for every new group (quadratic).
 */
#define UNION_FLAT_MEMBERS 1024

PG_FUNCTION_INFO_V1(userset_union_trans);
/*
 * Transition and combine function of userset_union: adds the members of
 * argument 1 to the state, in place once the state is large.  NULL sets
 * are skipped.
 */
Datum
userset_union_trans(PG_FUNCTION_ARGS)
{
	MemoryContext aggcontext = AggregateContext(fcinfo, "userset_union_trans");
	UsersetAccum *accum;

	if (PG_ARGISNULL(0) && PG_ARGISNULL(1))
		PG_RETURN_NULL();
	if (!PG_ARGISNULL(0) && IsUsersetAccum(PG_GETARG_DATUM(0)))
		accum = (UsersetAccum *) DatumGetEOHP(PG_GETARG_DATUM(0));
	else if (PG_ARGISNULL(1))
		PG_RETURN_DATUM(PG_GETARG_DATUM(0));
	else if (!IsUsersetAccum(PG_GETARG_DATUM(1)))
	{
		Userset    *b = PG_GETARG_USERSET(1);
		Userset    *a = PG_ARGISNULL(0) ? NULL : PG_GETARG_USERSET(0);
		uint64		size = (uint64) b->count + (a ? a->count : 0);

		/* small: a flat merge, which nodeAgg copies into its own memory */
		if (size < UNION_FLAT_MEMBERS)
			PG_RETURN_USERSET(a ? UsersetUnion(a, b) : b);
		accum = UsersetAccumCreate(aggcontext);
		if (a)
			IdSetAddUserset(accum->set, a);
	}
	else
	{
		accum = UsersetAccumCreate(aggcontext);
		if (!PG_ARGISNULL(0))
			IdSetAddUserset(accum->set, PG_GETARG_USERSET(0));
	}
	if (!PG_ARGISNULL(1))
	{
		Datum		arg = PG_GETARG_DATUM(1);

		if (IsUsersetAccum(arg))
		{
			/* another state, as a combine function may see */
			UsersetAccum *other = (UsersetAccum *) DatumGetEOHP(arg);

			accum->set = IdSetMerge(accum->set, other->set);
		}
		else
			IdSetAddUserset(accum->set, DatumGetUserset(arg));
		if (accum->flat)
		{
			pfree(accum->flat);
			accum->flat = NULL;
		}
	}
	PG_RETURN_DATUM(EOHPGetRWDatum(&accum->hdr));
}

/* One group, one threshold: a changing one has no single answer. */
static void
CheckSameThreshold(int32 was, int32 now)
{
	if (was != now)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("userset_at_least threshold changed within one group"),
				 errdetail("It was %d and is now %d.", was, now),
				 errhint("Pass the same threshold for every row of a group.")));
}

PG_FUNCTION_INFO_V1(userset_at_least_trans);
/* Count, per member, how many of the aggregated sets contain it. */
Datum
userset_at_least_trans(PG_FUNCTION_ARGS)
{
	AtLeastState *state = PG_ARGISNULL(0) ? NULL : (AtLeastState *) PG_GETARG_POINTER(0);
	int32		min_sets;

	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("userset_at_least threshold must not be null"),
				 errhint("Pass the minimum number of sets a member must appear in, such as 3.")));
	min_sets = PG_GETARG_INT32(2);
	if (min_sets < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("userset_at_least threshold must be at least 1"),
				 errdetail("The threshold given was %d.", min_sets),
				 errhint("Use userset_union() to keep members present in any set.")));
	if (state == NULL)
	{
		MemoryContext aggcontext = AggregateContext(fcinfo, "userset_at_least_trans");

		state = MemoryContextAlloc(aggcontext, sizeof(AtLeastState));
		state->min_sets = min_sets;
		state->set = IdSetCreate(aggcontext, true);
	}
	else
		CheckSameThreshold(state->min_sets, min_sets);
	if (!PG_ARGISNULL(1))
		IdSetAddUserset(state->set, PG_GETARG_USERSET(1));
	PG_RETURN_POINTER(state);
}

PG_FUNCTION_INFO_V1(userset_at_least_combine);
/* Add the counts of two partial states. */
Datum
userset_at_least_combine(PG_FUNCTION_ARGS)
{
	MemoryContext aggcontext = AggregateContext(fcinfo, "userset_at_least_combine");
	AtLeastState *dst = PG_ARGISNULL(0) ? NULL : (AtLeastState *) PG_GETARG_POINTER(0);
	AtLeastState *src = PG_ARGISNULL(1) ? NULL : (AtLeastState *) PG_GETARG_POINTER(1);

	if (src == NULL)
		PG_RETURN_POINTER(dst);
	if (dst == NULL)
	{
		/* adopt a state in our memory, as userset_agg_combine does */
		if (src->set->mcxt == aggcontext && GetMemoryChunkContext(src) == aggcontext)
			PG_RETURN_POINTER(src);
		dst = MemoryContextAlloc(aggcontext, sizeof(AtLeastState));
		dst->min_sets = src->min_sets;
		dst->set = IdSetCreate(aggcontext, true);
	}
	else
		CheckSameThreshold(dst->min_sets, src->min_sets);
	dst->set = IdSetMerge(dst->set, src->set);
	PG_RETURN_POINTER(dst);
}

PG_FUNCTION_INFO_V1(userset_at_least_serialize);
/* internal -> bytea, threshold included */
Datum
userset_at_least_serialize(PG_FUNCTION_ARGS)
{
	AtLeastState *state = (AtLeastState *) PG_GETARG_POINTER(0);

	PG_RETURN_BYTEA_P(IdSetSerialize(state->set, state->min_sets));
}

PG_FUNCTION_INFO_V1(userset_at_least_deserialize);
/* bytea -> internal, distrusting every byte */
Datum
userset_at_least_deserialize(PG_FUNCTION_ARGS)
{
	MemoryContext aggcontext = AggregateContext(fcinfo, "userset_at_least_deserialize");
	AtLeastState *state = MemoryContextAlloc(aggcontext, sizeof(AtLeastState));

	state->set = IdSetDeserialize(PG_GETARG_BYTEA_PP(0), true, &state->min_sets,
								  aggcontext);
	if (state->min_sets < 1)
		BadThreshold("The threshold is below one.");
	PG_RETURN_POINTER(state);
}

PG_FUNCTION_INFO_V1(userset_at_least_final);
/* Members seen in at least the threshold number of sets. */
Datum
userset_at_least_final(PG_FUNCTION_ARGS)
{
	AtLeastState *state = PG_ARGISNULL(0) ? NULL : (AtLeastState *) PG_GETARG_POINTER(0);
	IdSetIter	iter;
	int64	   *members;
	int64		member;
	uint64		n = 0;
	uint64		steps = 0;

	if (state == NULL)
		PG_RETURN_USERSET(UsersetFromSorted(NULL, 0));
	members = palloc_extended(mul_size(Max(IdSetCardinality(state->set), 1), sizeof(int64)),
							  MCXT_ALLOC_HUGE);
	IdSetIterInit(&iter, state->set);
	while (IdSetIterNext(&iter, &member))
	{
		if (IdSetIterCount(&iter) >= state->min_sets)
			members[n++] = member;
		if ((++steps & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
	}
	PG_RETURN_USERSET(UsersetFromUnsorted(members, n));
}
