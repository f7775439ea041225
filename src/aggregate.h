/*
 * aggregate.h
 *	  What every aggregate support function of mspbill needs.
 */
#ifndef MSPBILL_AGGREGATE_H
#define MSPBILL_AGGREGATE_H

#include "postgres.h"
#include "fmgr.h"

/*
 * The aggregate's memory context.  Support functions take internal
 * arguments, so a direct SQL call cannot happen by accident; refuse it
 * clearly anyway rather than allocate in the wrong place.
 */
static inline MemoryContext
AggregateContext(FunctionCallInfo fcinfo, const char *name)
{
	MemoryContext aggcontext;

	if (!AggCheckCallContext(fcinfo, &aggcontext))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s can only be called as part of an aggregate", name)));
	return aggcontext;
}

#endif							/* MSPBILL_AGGREGATE_H */
