/*
 * allocate.c
 *	  allocate(): split an amount across weights to the minor unit, exactly.
 *
 * Largest remainder (Hamilton) method: with U = total / minor_unit units,
 * every share gets floor(U * w / W) units, and the units left over go one
 * each to the largest remainders (U * w mod W), ties to the earlier row.
 * The shares therefore sum to the total, differ from the exact proportional
 * share by less than one unit, and never shrink as the weight grows.
 *
 * Weights are scaled to integers by their largest decimal scale, and the
 * split runs in int64/int128 whenever that is exact; otherwise it runs the
 * same steps in numeric.  A negative total (a credit) is split as its
 * absolute value and negated.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "windowapi.h"

/* numeric infinities and int64_to_numeric arrived in PostgreSQL 14 */
#if PG_VERSION_NUM < 140000
#define numeric_is_inf(a) false
#define int64_to_numeric(v) DatumGetNumeric(DirectFunctionCall1(int8_numeric, Int64GetDatum(v)))
#endif

/* One split: the input and, once computed, the units of every share. */
typedef struct Split
{
	int64		n;
	Numeric    *weights;
	Numeric		minor;			/* minor unit, > 0 */
	int			minor_log10;	/* k when minor = 10^-k, k >= 0; else -1 */
	bool		negative;		/* total < 0: shares are negated */
	int64	   *units;			/* shares in minor units (integer path) */
	Numeric    *units_num;		/* shares in minor units (numeric path) */
} Split;

/* Remainder of one share, ordered largest first, then earliest row. */
typedef struct Remainder
{
#ifdef HAVE_INT128
	int128		rem;
#endif
	Numeric		rem_num;
	int64		row;
} Remainder;

static inline int
NumCmp(Numeric a, Numeric b)
{
	return DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(a),
											 NumericGetDatum(b)));
}

static inline Numeric
NumMul(Numeric a, Numeric b)
{
	return DatumGetNumeric(DirectFunctionCall2(numeric_mul, NumericGetDatum(a),
											   NumericGetDatum(b)));
}

static inline int
NumScale(Numeric a)
{
	return DatumGetInt32(DirectFunctionCall1(numeric_scale, NumericGetDatum(a)));
}

/* Is a a finite number (not NaN, not +-Infinity)? */
static inline bool
NumIsFinite(Numeric a)
{
	return !numeric_is_nan(a) && !numeric_is_inf(a);
}

/* numeric 10^k for 0 <= k <= 18 */
static Numeric
Pow10(int k)
{
	int64		v = 1;

	while (k-- > 0)
		v *= 10;
	return int64_to_numeric(v);
}

/* Convert an integral numeric to int64 if it fits; no error on overflow. */
static bool
NumToInt64(Numeric a, int64 *out)
{
	/* the bounds are built once per backend */
	static Numeric lo = NULL;
	static Numeric hi = NULL;

	if (hi == NULL)
	{
		MemoryContext oldcontext = MemoryContextSwitchTo(TopMemoryContext);

		lo = int64_to_numeric(PG_INT64_MIN);
		hi = int64_to_numeric(PG_INT64_MAX);
		MemoryContextSwitchTo(oldcontext);
	}
	if (NumCmp(a, lo) < 0 || NumCmp(a, hi) > 0)
		return false;
	*out = DatumGetInt64(DirectFunctionCall1(numeric_int8, NumericGetDatum(a)));
	return true;
}

/* Report a bad argument in the one style every check uses. */
static void
BadSplit(int sqlstate, const char *msg, const char *detail, const char *hint)
{
	ereport(ERROR,
			(errcode(sqlstate),
			 errmsg("%s", msg),
			 detail ? errdetail("%s", detail) : 0,
			 hint ? errhint("%s", hint) : 0));
}

/* Check the minor unit and record whether it is a power of ten. */
static void
SplitSetMinor(Split *split, Numeric minor)
{
	Numeric		zero = int64_to_numeric(0);
	int			k;

	if (!NumIsFinite(minor) || NumCmp(minor, zero) <= 0)
		BadSplit(ERRCODE_INVALID_PARAMETER_VALUE,
				 "allocate minor_unit must be greater than zero",
				 psprintf("The minor unit given was %s.",
						  DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(minor)))),
				 "Pass the currency's smallest amount, such as 0.01.");
	split->minor = minor;
	/* 10^-k has scale k; it is a power of ten when minor * 10^k = 1 */
	k = NumScale(minor);
	split->minor_log10 =
		(k <= 18 && NumCmp(NumMul(minor, Pow10(k)), int64_to_numeric(1)) == 0) ? k : -1;
}

/* Order remainders: larger first, then earlier row (integer path). */
#ifdef HAVE_INT128
static int
CompareRemainder(const void *a, const void *b)
{
	const Remainder *x = (const Remainder *) a;
	const Remainder *y = (const Remainder *) b;

	if (x->rem != y->rem)
		return x->rem > y->rem ? -1 : 1;
	return x->row < y->row ? -1 : (x->row > y->row);
}
#endif

/* Order remainders: larger first, then earlier row (numeric path). */
static int
CompareRemainderNum(const void *a, const void *b)
{
	const Remainder *x = (const Remainder *) a;
	const Remainder *y = (const Remainder *) b;
	int			c = NumCmp(y->rem_num, x->rem_num);

	if (c != 0)
		return c;
	return x->row < y->row ? -1 : (x->row > y->row);
}

#ifdef HAVE_INT128
/*
 * Integer path: U and every weight scaled by 10^scale fit in int64, so
 * U * w fits in int128 and the sum of weights cannot overflow it.
 */
static bool
SplitInteger(Split *split, Numeric units_total, int scale)
{
	int64		n = split->n;
	int64		total;
	int64	   *w;
	int128		wsum = 0;
	int128		given = 0;
	int64		left;
	Remainder  *rems;
	Numeric		factor;
	int64		i;

	if (scale > 18 || !NumToInt64(units_total, &total))
		return false;
	factor = scale > 0 ? Pow10(scale) : NULL;
	w = palloc_extended(Max(n, 1) * sizeof(int64), MCXT_ALLOC_HUGE);
	for (i = 0; i < n; i++)
	{
		Numeric		scaled = factor ? NumMul(split->weights[i], factor) : split->weights[i];

		if (!NumToInt64(scaled, &w[i]))
		{
			pfree(w);
			return false;
		}
		wsum += w[i];
	}

	split->units = palloc_extended(Max(n, 1) * sizeof(int64), MCXT_ALLOC_HUGE);
	rems = palloc_extended(Max(n, 1) * sizeof(Remainder), MCXT_ALLOC_HUGE);
	for (i = 0; i < n; i++)
	{
		int128		p = (int128) total * w[i];

		split->units[i] = (int64) (p / wsum);
		rems[i].rem = p % wsum;
		rems[i].row = i;
		given += split->units[i];
		if ((i & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
	}
	left = (int64) (total - given);
	Assert(left >= 0 && left < Max(n, 1));
	if (left > 0)
	{
		qsort(rems, n, sizeof(Remainder), CompareRemainder);
		for (i = 0; i < left; i++)
			split->units[rems[i].row]++;
	}
	pfree(rems);
	pfree(w);
	return true;
}
#endif

/* Numeric path: the same steps for amounts or weights beyond int64. */
static void
SplitNumeric(Split *split, Numeric units_total, Numeric wsum)
{
	int64		n = split->n;
	Numeric		given = int64_to_numeric(0);
	Numeric		one = int64_to_numeric(1);
	Numeric		left;
	Remainder  *rems;
	int64		i;

	split->units_num = palloc_extended(Max(n, 1) * sizeof(Numeric), MCXT_ALLOC_HUGE);
	rems = palloc_extended(Max(n, 1) * sizeof(Remainder), MCXT_ALLOC_HUGE);
	for (i = 0; i < n; i++)
	{
		Numeric		p = NumMul(units_total, split->weights[i]);

		split->units_num[i] = DatumGetNumeric(DirectFunctionCall2(numeric_div_trunc,
																  NumericGetDatum(p),
																  NumericGetDatum(wsum)));
		rems[i].rem_num = DatumGetNumeric(DirectFunctionCall2(numeric_sub,
															  NumericGetDatum(p),
															  NumericGetDatum(NumMul(split->units_num[i], wsum))));
		rems[i].row = i;
		given = DatumGetNumeric(DirectFunctionCall2(numeric_add, NumericGetDatum(given),
													NumericGetDatum(split->units_num[i])));
		CHECK_FOR_INTERRUPTS();
	}
	left = DatumGetNumeric(DirectFunctionCall2(numeric_sub, NumericGetDatum(units_total),
											   NumericGetDatum(given)));
	qsort(rems, n, sizeof(Remainder), CompareRemainderNum);
	for (i = 0; i < n && NumCmp(int64_to_numeric(i), left) < 0; i++)
		split->units_num[rems[i].row] =
			DatumGetNumeric(DirectFunctionCall2(numeric_add,
												NumericGetDatum(split->units_num[rems[i].row]),
												NumericGetDatum(one)));
	pfree(rems);
}

/*
 * Validate the inputs and compute every share.  Weights must already be
 * non-NULL; the caller reports NULLs with its own wording.
 */
static void
SplitCompute(Split *split, Numeric total, Numeric minor)
{
	Numeric		zero = int64_to_numeric(0);
	Numeric		units_total;
	Numeric		wsum = zero;
	int			scale = 0;
	int64		i;

	if (!NumIsFinite(total))
		BadSplit(ERRCODE_INVALID_PARAMETER_VALUE,
				 "allocate total must be a finite amount",
				 NULL, "Pass the cost pool's amount, or NULL for no amount.");
	SplitSetMinor(split, minor);
	if (NumCmp(DatumGetNumeric(DirectFunctionCall2(numeric_mod, NumericGetDatum(total),
												   NumericGetDatum(minor))), zero) != 0)
		BadSplit(ERRCODE_INVALID_PARAMETER_VALUE,
				 "allocate total is not a whole number of minor units",
				 psprintf("The total %s is not a multiple of the minor unit %s.",
						  DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(total))),
						  DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(minor)))),
				 "Round the total to the minor unit first, or pass a smaller minor_unit.");

	for (i = 0; i < split->n; i++)
	{
		Numeric		w = split->weights[i];

		if (!NumIsFinite(w) || NumCmp(w, zero) < 0)
			BadSplit(ERRCODE_INVALID_PARAMETER_VALUE,
					 "allocate weight must not be negative",
					 psprintf("Row %lld has weight %s.", (long long) i + 1,
							  DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(w)))),
					 "Weights are quantities such as devices or users; use 0 for a row that gets nothing.");
		scale = Max(scale, NumScale(w));
		wsum = DatumGetNumeric(DirectFunctionCall2(numeric_add, NumericGetDatum(wsum),
												   NumericGetDatum(w)));
		if ((i & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
	}
	if (NumCmp(wsum, zero) == 0)
		BadSplit(ERRCODE_INVALID_PARAMETER_VALUE,
				 "allocate weights sum to zero",
				 psprintf("All %lld weights are zero, so no share can be computed.",
						  (long long) split->n),
				 "Give at least one row a positive weight.");

	split->negative = NumCmp(total, zero) < 0;
	units_total = DatumGetNumeric(DirectFunctionCall2(numeric_div_trunc,
													  NumericGetDatum(DatumGetNumeric(DirectFunctionCall1(numeric_abs, NumericGetDatum(total)))),
													  NumericGetDatum(minor)));
#ifdef HAVE_INT128
	if (SplitInteger(split, units_total, scale))
		return;
#endif
	SplitNumeric(split, units_total, wsum);
}

/* Share i as an amount: units * minor, negated for a credit. */
static Numeric
SplitShare(const Split *split, int64 i)
{
	Numeric		amount;

	if (split->units != NULL)
	{
		int64		units = split->negative ? -split->units[i] : split->units[i];

#if PG_VERSION_NUM >= 140000
		if (split->minor_log10 >= 0)
			return int64_div_fast_to_numeric(units, split->minor_log10);
#endif
		amount = int64_to_numeric(units);
	}
	else
	{
		amount = split->units_num[i];
		if (split->negative)
			amount = DatumGetNumeric(DirectFunctionCall1(numeric_uminus,
														 NumericGetDatum(amount)));
	}
	return NumMul(amount, split->minor);
}

PG_FUNCTION_INFO_V1(allocate_array);
/* allocate(total, weights[], minor_unit): the split of an array of weights. */
Datum
allocate_array(PG_FUNCTION_ARGS)
{
	Numeric		total = PG_GETARG_NUMERIC(0);
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(1);
	Numeric		minor = PG_GETARG_NUMERIC(2);
	Split		split = {0};
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;
	int			i;

	if (ARR_NDIM(arr) > 1)
		BadSplit(ERRCODE_ARRAY_SUBSCRIPT_ERROR,
				 "allocate weights must be a one-dimensional array",
				 NULL, NULL);
	deconstruct_array(arr, NUMERICOID, -1, false, TYPALIGN_INT,
					  &elems, &nulls, &nelems);
	split.n = nelems;
	split.weights = palloc(Max(nelems, 1) * sizeof(Numeric));
	for (i = 0; i < nelems; i++)
	{
		if (nulls[i])
			BadSplit(ERRCODE_NULL_VALUE_NOT_ALLOWED,
					 "allocate weight must not be null",
					 psprintf("Element %d of the weights is null.", i + 1),
					 "Use 0 for an element that gets nothing.");
		split.weights[i] = DatumGetNumeric(elems[i]);
	}
	SplitCompute(&split, total, minor);
	for (i = 0; i < nelems; i++)
		elems[i] = NumericGetDatum(SplitShare(&split, i));
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, nelems, NUMERICOID, -1, false,
										  TYPALIGN_INT));
}

/* Per-partition state of the window form. */
typedef struct AllocatePartition
{
	bool		computed;
	bool		null_total;
	Split		split;
} AllocatePartition;

/* Fetch argument argno of partition row `row`, or report it outside. */
static Datum
PartitionArg(WindowObject winobj, int argno, int64 row, bool *isnull)
{
	bool		isout;
	Datum		d = WinGetFuncArgInPartition(winobj, argno, (int) row,
											 WINDOW_SEEK_HEAD, false,
											 isnull, &isout);

	if (isout)
		elog(ERROR, "allocate: partition row " INT64_FORMAT " is missing", row);
	return d;
}

/* Read the whole partition once and compute all shares. */
static void
AllocatePartitionCompute(WindowObject winobj, AllocatePartition *part)
{
	MemoryContext partcontext = GetMemoryChunkContext(part);
	MemoryContext oldcontext = MemoryContextSwitchTo(partcontext);
	int64		n = WinGetPartitionRowCount(winobj);
	Numeric		total = NULL;
	Numeric		minor = NULL;
	int64		i;

	part->split.n = n;
	part->split.weights = palloc_extended(Max(n, 1) * sizeof(Numeric), MCXT_ALLOC_HUGE);
	for (i = 0; i < n; i++)
	{
		bool		isnull;
		Datum		d;

		if ((i & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();

		/* the total (and minor unit) must not change within the partition */
		d = PartitionArg(winobj, 0, i, &isnull);
		if (i == 0)
		{
			part->null_total = isnull;
			if (!isnull)
				total = DatumGetNumericCopy(d);
		}
		else if (isnull != part->null_total ||
				 (!isnull && NumCmp(total, DatumGetNumeric(d)) != 0))
			BadSplit(ERRCODE_INVALID_PARAMETER_VALUE,
					 "allocate total changes within one partition",
					 psprintf("Row %lld has a different total than row 1.", (long long) i + 1),
					 "PARTITION BY the cost pool so that every row of a partition has the same total.");
		if (part->null_total)
			continue;

		d = PartitionArg(winobj, 1, i, &isnull);
		if (isnull)
			BadSplit(ERRCODE_NULL_VALUE_NOT_ALLOWED,
					 "allocate weight must not be null",
					 psprintf("Row %lld of the partition has a null weight.", (long long) i + 1),
					 "Use 0 for a row that gets nothing, e.g. coalesce(weight, 0).");
		part->split.weights[i] = DatumGetNumericCopy(d);

		d = PartitionArg(winobj, 2, i, &isnull);
		if (isnull)
			BadSplit(ERRCODE_NULL_VALUE_NOT_ALLOWED,
					 "allocate minor_unit must not be null",
					 NULL, "Pass the currency's smallest amount, such as 0.01.");
		if (i == 0)
			minor = DatumGetNumericCopy(d);
		else if (NumCmp(minor, DatumGetNumeric(d)) != 0)
			BadSplit(ERRCODE_INVALID_PARAMETER_VALUE,
					 "allocate minor_unit changes within one partition",
					 psprintf("Row %lld has a different minor unit than row 1.", (long long) i + 1),
					 "Use one minor unit per partition.");
	}
	if (!part->null_total)
		SplitCompute(&part->split, total, minor);
	MemoryContextSwitchTo(oldcontext);
	part->computed = true;
}

PG_FUNCTION_INFO_V1(allocate_window);
/* allocate(total, weight, minor_unit) OVER (...): this row's share. */
Datum
allocate_window(PG_FUNCTION_ARGS)
{
	WindowObject winobj = PG_WINDOW_OBJECT();
	AllocatePartition *part;
	int64		row;

	part = (AllocatePartition *) WinGetPartitionLocalMemory(winobj, sizeof(AllocatePartition));
	if (!part->computed)
		AllocatePartitionCompute(winobj, part);
	row = WinGetCurrentPosition(winobj);
	/* rows before this one are done with; let the tuplestore drop them */
	WinSetMarkPosition(winobj, row);
	if (part->null_total)
		PG_RETURN_NULL();
	PG_RETURN_NUMERIC(SplitShare(&part->split, row));
}
