/*
 * userset_agg.c
 *	  Exact counting aggregates: userset_agg, distinct_count, userset_union
 *	  and userset_at_least.
 *
 * userset_agg and distinct_count share one internal state (an IdSet) and
 * differ only in their final function.  Their states cross process
 * boundaries in parallel plans through serialize/deserialize, which treat
 * the bytes they receive as untrusted.
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
#include "utils/expandeddatum.h"
#include "utils/memutils.h"

#include "aggregate.h"
#include "userset.h"

#define IDSET_SERIAL_VERSION 1
#define IDSET_SERIAL_HAS_ZERO 0x01
#define IDSET_SERIAL_COUNTS 0x02

/* State of userset_at_least: the threshold travels with the counts. */
typedef struct AtLeastState
{
	int32		min_sets;
	IdSet	   *set;
} AtLeastState;

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

/* Fold src into dst (both plain sets or both counting sets). */
static void
IdSetMerge(IdSet *dst, const IdSet *src)
{
	IdSetIter	iter;
	int64		member;
	uint64		n = 0;

	Assert(dst->counting == src->counting);
	IdSetIterInit(&iter, src);
	while (IdSetIterNext(&iter, &member))
	{
		if ((++n & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
		if (!dst->counting)
			IdSetAdd(dst, member);
		else if (member == 0)
			IdSetAddCount(dst, 0, src->zero_count);
		else
			IdSetAddCount(dst, member, src->counts[iter.slot]);
	}
}

PG_FUNCTION_INFO_V1(userset_agg_combine);
/* Combine two partial states; the result must live in the aggregate context. */
Datum
userset_agg_combine(PG_FUNCTION_ARGS)
{
	MemoryContext aggcontext = AggregateContext(fcinfo, "userset_agg_combine");
	IdSet	   *dst = PG_ARGISNULL(0) ? NULL : (IdSet *) PG_GETARG_POINTER(0);
	IdSet	   *src = PG_ARGISNULL(1) ? NULL : (IdSet *) PG_GETARG_POINTER(1);

	if (src == NULL)
		PG_RETURN_POINTER(dst);
	if (dst == NULL)
		dst = IdSetCreate(aggcontext, false);
	IdSetMerge(dst, src);
	PG_RETURN_POINTER(dst);
}

/*
 * Serialized IdSet: version byte, flags byte, member count (int8), then the
 * members (int8 each, zero excluded) and, for counting sets, the zero count
 * and one count per member.
 */
static bytea *
IdSetSerialize(const IdSet *set, int32 min_sets)
{
	StringInfoData buf;
	IdSetIter	iter;
	int64		member;

	pq_begintypsend(&buf);
	pq_sendbyte(&buf, IDSET_SERIAL_VERSION);
	pq_sendbyte(&buf, (set->has_zero ? IDSET_SERIAL_HAS_ZERO : 0) |
				(set->counting ? IDSET_SERIAL_COUNTS : 0));
	pq_sendint32(&buf, min_sets);
	pq_sendint64(&buf, IdSetCardinality(set) - (set->has_zero ? 1 : 0));
	IdSetIterInit(&iter, set);
	while (IdSetIterNext(&iter, &member))
		if (member != 0)
			pq_sendint64(&buf, member);
	if (set->counting)
	{
		/* counting sets have no bitmap: their members are the slots, in order */
		uint64		i;

		pq_sendint64(&buf, set->zero_count);
		for (i = 0; i < set->capacity; i++)
			if (set->slots[i] != 0)
				pq_sendint64(&buf, set->counts[i]);
	}
	return pq_endtypsend(&buf);
}

/* Report a serialized state that cannot have come from IdSetSerialize. */
static void
BadSerialState(const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
			 errmsg("invalid serialized userset aggregate state"),
			 errdetail("%s", detail)));
}

/* Rebuild an IdSet in mcxt from bytes made by IdSetSerialize. */
static IdSet *
IdSetDeserialize(bytea *bytes, bool with_counts, int32 *min_sets,
				 MemoryContext mcxt)
{
	StringInfoData buf;
	IdSet	   *set;
	int			version;
	int			flags;
	int64		n;
	int64		i;
	int64	   *members;

	buf.data = VARDATA_ANY(bytes);
	buf.len = VARSIZE_ANY_EXHDR(bytes);
	buf.maxlen = buf.len;
	buf.cursor = 0;

	if (buf.len < 14)
		BadSerialState("The state is shorter than its header.");
	version = pq_getmsgbyte(&buf);
	flags = pq_getmsgbyte(&buf);
	*min_sets = pq_getmsgint(&buf, 4);
	n = pq_getmsgint64(&buf);
	if (version != IDSET_SERIAL_VERSION)
		BadSerialState("Unknown state version.");
	if ((flags & ~(IDSET_SERIAL_HAS_ZERO | IDSET_SERIAL_COUNTS)) != 0 ||
		((flags & IDSET_SERIAL_COUNTS) != 0) != with_counts)
		BadSerialState("Unknown or mismatched state flags.");
	if (n < 0 || n > (buf.len - buf.cursor) / 8 ||
		buf.len - buf.cursor != n * 8 * (with_counts ? 2 : 1) + (with_counts ? 8 : 0))
		BadSerialState("The member count does not match the state's length.");

	set = IdSetCreate(mcxt, with_counts);
	members = palloc_extended(Max(n, 1) * sizeof(int64), MCXT_ALLOC_HUGE);
	for (i = 0; i < n; i++)
	{
		members[i] = pq_getmsgint64(&buf);
		if (members[i] == 0)
			BadSerialState("Member 0 appears in the member list.");
	}
	if (with_counts)
	{
		int64		zero_count = pq_getmsgint64(&buf);

		if ((zero_count > 0) != ((flags & IDSET_SERIAL_HAS_ZERO) != 0) || zero_count < 0)
			BadSerialState("The count of member 0 does not match its flag.");
		if (zero_count > 0)
			IdSetAddCount(set, 0, zero_count);
		for (i = 0; i < n; i++)
		{
			int64		count = pq_getmsgint64(&buf);

			if (count <= 0)
				BadSerialState("A member has a count below one.");
			IdSetAddCount(set, members[i], count);
		}
	}
	else
	{
		if (flags & IDSET_SERIAL_HAS_ZERO)
			IdSetAdd(set, 0);
		for (i = 0; i < n; i++)
			IdSetAdd(set, members[i]);
	}
	pfree(members);
	return set;
}

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
		BadSerialState("A plain set carries a threshold.");
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

	Assert(accum->flat != NULL && allocated_size == VARSIZE(accum->flat));
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

PG_FUNCTION_INFO_V1(userset_union_trans);
/*
 * Transition and combine function of userset_union: adds the members of
 * argument 1 to the state in place.  NULL sets are skipped.
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

			IdSetMerge(accum->set, other->set);
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
		dst = MemoryContextAlloc(aggcontext, sizeof(AtLeastState));
		dst->min_sets = src->min_sets;
		dst->set = IdSetCreate(aggcontext, true);
	}
	else
		CheckSameThreshold(dst->min_sets, src->min_sets);
	IdSetMerge(dst->set, src->set);
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
		BadSerialState("The threshold is below one.");
	PG_RETURN_POINTER(state);
}

PG_FUNCTION_INFO_V1(userset_at_least_final);
/* Members seen in at least the threshold number of sets. */
Datum
userset_at_least_final(PG_FUNCTION_ARGS)
{
	AtLeastState *state = PG_ARGISNULL(0) ? NULL : (AtLeastState *) PG_GETARG_POINTER(0);
	IdSet	   *set;
	int64	   *members;
	uint64		n = 0;
	uint64		i;

	if (state == NULL)
		PG_RETURN_USERSET(UsersetFromSorted(NULL, 0));
	set = state->set;
	members = palloc_extended(Max(IdSetCardinality(set), 1) * sizeof(int64),
							  MCXT_ALLOC_HUGE);
	if (set->has_zero && set->zero_count >= state->min_sets)
		members[n++] = 0;
	for (i = 0; i < set->capacity; i++)
		if (set->slots[i] != 0 && set->counts[i] >= state->min_sets)
			members[n++] = (int64) set->slots[i];
	PG_RETURN_USERSET(UsersetFromUnsorted(members, n));
}
