/*
 * peak_concurrency.c
 *	  peak_concurrency(tstzrange): the largest number of ranges that cover
 *	  one instant, the seat count of a shared workstation or room.
 *
 * Each range becomes two events.  Sorting them by time, and at equal times
 * by how the bound treats that instant, makes one sweep exact for any mix
 * of inclusive and exclusive bounds: [9,10) and [10,11) never overlap,
 * [9,10] and [10,11) do.
 */
#include "postgres.h"

#if PG_VERSION_NUM >= 160000
#include "varatt.h"
#endif

#include "datatype/timestamp.h"
#include "lib/stringinfo.h"
#include "libpq/pqformat.h"
#include "miscadmin.h"
#include "storage/shmem.h"		/* add_size, mul_size */
#include "utils/rangetypes.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "aggregate.h"

/*
 * Event ranks at one instant, in processing order.  Odd ranks open a range.
 * The peak is read after every opening.
 */
#define EV_CLOSE_BEFORE 0		/* exclusive upper bound: gone at t */
#define EV_OPEN_AT		1		/* inclusive lower bound: present at t */
#define EV_CLOSE_AFTER	2		/* inclusive upper bound: gone just after t */
#define EV_OPEN_AFTER	3		/* exclusive lower bound: present just after t */

typedef struct PeakEvent
{
	int64		at;				/* TimestampTz, or the infinities */
	int32		rank;
} PeakEvent;

typedef struct PeakState
{
	int64		nevents;
	int64		capacity;
	PeakEvent  *events;
} PeakState;

/* An empty state with room for a few events. */
static PeakState *
PeakStateCreate(MemoryContext mcxt, int64 capacity)
{
	PeakState  *state = MemoryContextAlloc(mcxt, sizeof(PeakState));

	state->nevents = 0;
	state->capacity = Max(capacity, 16);
	state->events = MemoryContextAllocHuge(mcxt, mul_size(state->capacity, sizeof(PeakEvent)));
	return state;
}

/* Append one event, growing in the state's own context. */
static inline void
PeakAdd(PeakState *state, int64 at, int32 rank)
{
	if (state->nevents == state->capacity)
	{
		state->capacity *= 2;
		state->events = repalloc_huge(state->events,
									  mul_size(state->capacity, sizeof(PeakEvent)));
	}
	state->events[state->nevents].at = at;
	state->events[state->nevents].rank = rank;
	state->nevents++;
}

PG_FUNCTION_INFO_V1(peak_concurrency_trans);
/* Record a range's two bounds; NULL and empty ranges cover no instant. */
Datum
peak_concurrency_trans(PG_FUNCTION_ARGS)
{
	PeakState  *state = PG_ARGISNULL(0) ? NULL : (PeakState *) PG_GETARG_POINTER(0);
	RangeType  *range;
	TypeCacheEntry *typcache;
	RangeBound	lower;
	RangeBound	upper;
	bool		empty;

	if (state == NULL)
		state = PeakStateCreate(AggregateContext(fcinfo, "peak_concurrency_trans"), 16);
	if (PG_ARGISNULL(1))
		PG_RETURN_POINTER(state);

	range = PG_GETARG_RANGE_P(1);
	typcache = (TypeCacheEntry *) fcinfo->flinfo->fn_extra;
	if (typcache == NULL || typcache->type_id != RangeTypeGetOid(range))
	{
		typcache = lookup_type_cache(RangeTypeGetOid(range), TYPECACHE_RANGE_INFO);
		fcinfo->flinfo->fn_extra = typcache;
	}
	range_deserialize(typcache, range, &lower, &upper, &empty);
	if (empty)
		PG_RETURN_POINTER(state);

	if (lower.infinite)
		PeakAdd(state, PG_INT64_MIN, EV_OPEN_AT);
	else
		PeakAdd(state, DatumGetTimestampTz(lower.val),
				lower.inclusive ? EV_OPEN_AT : EV_OPEN_AFTER);
	if (upper.infinite)
		PeakAdd(state, PG_INT64_MAX, EV_CLOSE_AFTER);
	else
		PeakAdd(state, DatumGetTimestampTz(upper.val),
				upper.inclusive ? EV_CLOSE_AFTER : EV_CLOSE_BEFORE);
	PG_RETURN_POINTER(state);
}

PG_FUNCTION_INFO_V1(peak_concurrency_combine);
/* Concatenate the events of two partial states. */
Datum
peak_concurrency_combine(PG_FUNCTION_ARGS)
{
	MemoryContext aggcontext = AggregateContext(fcinfo, "peak_concurrency_combine");
	PeakState  *dst = PG_ARGISNULL(0) ? NULL : (PeakState *) PG_GETARG_POINTER(0);
	PeakState  *src = PG_ARGISNULL(1) ? NULL : (PeakState *) PG_GETARG_POINTER(1);
	int64		i;

	if (src == NULL)
		PG_RETURN_POINTER(dst);
	if (dst == NULL)
		dst = PeakStateCreate(aggcontext, src->nevents);
	for (i = 0; i < src->nevents; i++)
	{
		if ((i & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
		PeakAdd(dst, src->events[i].at, src->events[i].rank);
	}
	PG_RETURN_POINTER(dst);
}

PG_FUNCTION_INFO_V1(peak_concurrency_serialize);
/* internal -> bytea: event count, then (int8 time, byte rank) per event */
Datum
peak_concurrency_serialize(PG_FUNCTION_ARGS)
{
	PeakState  *state = (PeakState *) PG_GETARG_POINTER(0);
	StringInfoData buf;
	int64		i;

	pq_begintypsend(&buf);
	pq_sendint64(&buf, state->nevents);
	for (i = 0; i < state->nevents; i++)
	{
		if ((i & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
		pq_sendint64(&buf, state->events[i].at);
		pq_sendbyte(&buf, (uint8) state->events[i].rank);
	}
	PG_RETURN_BYTEA_P(pq_endtypsend(&buf));
}

PG_FUNCTION_INFO_V1(peak_concurrency_deserialize);
/* bytea -> internal, distrusting every byte */
Datum
peak_concurrency_deserialize(PG_FUNCTION_ARGS)
{
	MemoryContext aggcontext = AggregateContext(fcinfo, "peak_concurrency_deserialize");
	bytea	   *bytes = PG_GETARG_BYTEA_PP(0);
	StringInfoData buf;
	PeakState  *state;
	int64		n;
	int64		i;

	buf.data = VARDATA_ANY(bytes);
	buf.len = VARSIZE_ANY_EXHDR(bytes);
	buf.maxlen = buf.len;
	buf.cursor = 0;
	if (buf.len < 8)
		n = -1;
	else
		n = pq_getmsgint64(&buf);
	if (n < 0 || n > (buf.len - buf.cursor) / 9 || n * 9 != buf.len - buf.cursor)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("invalid serialized peak_concurrency state"),
				 errdetail("The event count does not match the state's length.")));
	state = PeakStateCreate(aggcontext, n);
	for (i = 0; i < n; i++)
	{
		int64		at = pq_getmsgint64(&buf);
		int			rank = pq_getmsgbyte(&buf);

		if (rank > EV_OPEN_AFTER)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
					 errmsg("invalid serialized peak_concurrency state"),
					 errdetail("Event %lld has unknown kind %d.", (long long) i + 1, rank)));
		PeakAdd(state, at, rank);
	}
	PG_RETURN_POINTER(state);
}

/* Order events by time, then by rank. */
static int
ComparePeakEvents(const void *a, const void *b)
{
	const PeakEvent *x = (const PeakEvent *) a;
	const PeakEvent *y = (const PeakEvent *) b;

	if (x->at != y->at)
		return x->at < y->at ? -1 : 1;
	return x->rank - y->rank;
}

PG_FUNCTION_INFO_V1(peak_concurrency_final);
/* Sweep the sorted events; 0 when no range covers any instant. */
Datum
peak_concurrency_final(PG_FUNCTION_ARGS)
{
	PeakState  *state = PG_ARGISNULL(0) ? NULL : (PeakState *) PG_GETARG_POINTER(0);
	int64		current = 0;
	int64		peak = 0;
	int64		i;

	if (state == NULL)
		PG_RETURN_INT32(0);
	/* sorting in place is fine: the state stays a valid multiset */
	qsort(state->events, state->nevents, sizeof(PeakEvent), ComparePeakEvents);
	for (i = 0; i < state->nevents; i++)
	{
		if ((i & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
		if (state->events[i].rank & 1)
		{
			current++;
			peak = Max(peak, current);
		}
		else
			current--;
	}
	if (peak > PG_INT32_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("peak concurrency exceeds the integer range")));
	PG_RETURN_INT32((int32) peak);
}
