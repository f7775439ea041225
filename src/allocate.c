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

#if PG_VERSION_NUM >= 160000
#include "varatt.h"
#endif

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "storage/shmem.h"		/* add_size, mul_size */
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

/* Remainder of one share (integer path), ranked largest first, then earliest row. */
#ifdef HAVE_INT128
typedef struct Remainder
{
	int128		rem;
	int64		row;
} Remainder;
#endif

/* Remainder of one share (numeric path). */
typedef struct RemainderNum
{
	Numeric		rem;
	int64		row;
} RemainderNum;

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
	bool		overflow = false;
	int32		small;

	/* most weights and amounts fit in int4, which converts without a throw */
	small = numeric_int4_opt_error(a, &overflow);
	if (!overflow)
	{
		*out = small;
		return true;
	}
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

/* Are two numerics equal?  Equal bytes answer without a comparison call. */
static inline bool
NumEqual(Numeric a, Numeric b)
{
	if (VARSIZE_ANY(a) == VARSIZE_ANY(b) && memcmp(a, b, VARSIZE_ANY(a)) == 0)
		return true;
	return NumCmp(a, b) == 0;
}

/* numeric as text, for messages */
static inline char *
NumText(Numeric a)
{
	return DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(a)));
}

/*
 * Both forms refuse a NULL minor unit once the total is known: shares in
 * an unknown unit would be silently missing money.
 */
static void
NullMinorUnit(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
			 errmsg("allocate minor_unit must not be null"),
			 errhint("Pass the currency's smallest amount, such as 0.01.")));
}

/* Check the minor unit and record whether it is a power of ten. */
static void
SplitSetMinor(Split *split, Numeric minor)
{
	Numeric		zero = int64_to_numeric(0);
	int			k;

	if (!NumIsFinite(minor) || NumCmp(minor, zero) <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("allocate minor_unit must be greater than zero"),
				 errdetail("The minor unit given was %s.", NumText(minor)),
				 errhint("Pass the currency's smallest amount, such as 0.01.")));
	split->minor = minor;
	/* 10^-k has scale k; it is a power of ten when minor * 10^k = 1 */
	k = NumScale(minor);
	split->minor_log10 =
		(k <= 18 && NumCmp(NumMul(minor, Pow10(k)), int64_to_numeric(1)) == 0) ? k : -1;
}

/* Refuse a negative, NaN or infinite weight, naming its row. */
static void
BadWeight(int64 row, Numeric w)
{
	if (!NumIsFinite(w))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("allocate weight must be a finite number"),
				 errdetail("Row %lld has weight %s.", (long long) row + 1, NumText(w)),
				 errhint("Weights are quantities such as devices or users; use 0 for a row that gets nothing.")));
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("allocate weight must not be negative"),
			 errdetail("Row %lld has weight %s.", (long long) row + 1, NumText(w)),
			 errhint("Weights are quantities such as devices or users; use 0 for a row that gets nothing.")));
}

/* Refuse weights that leave nothing to divide by. */
static void
ZeroWeights(int64 n)
{
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("allocate needs at least one weight"),
				 errdetail("The weights array is empty, so there is no one to give the total to."),
				 errhint("Pass one weight per share, such as ARRAY[1, 1, 1].")));
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("allocate weights sum to zero"),
			 errdetail("All %lld weights are zero, so no share can be computed.", (long long) n),
			 errhint("Give at least one row a positive weight.")));
}

#ifdef HAVE_INT128
/* Does remainder a rank before b: larger, or equal and earlier? */
static inline bool
RanksBefore(const Remainder *a, const Remainder *b)
{
	return a->rem > b->rem || (a->rem == b->rem && a->row < b->row);
}

/*
 * Move the k best-ranked remainders to rems[0..k-1] (in any order):
 * quickselect, linear on average, since only the winners matter.
 */
static void
SelectBest(Remainder *rems, int64 n, int64 k)
{
	int64		lo = 0;
	int64		hi = n - 1;

	while (lo < hi)
	{
		Remainder	pivot = rems[lo + (hi - lo) / 2];
		int64		i = lo;
		int64		j = hi;

		while (i <= j)
		{
			while (RanksBefore(&rems[i], &pivot))
				i++;
			while (RanksBefore(&pivot, &rems[j]))
				j--;
			if (i <= j)
			{
				Remainder	tmp = rems[i];

				rems[i++] = rems[j];
				rems[j--] = tmp;
			}
		}
		if (k - 1 <= j)
			hi = j;
		else if (k - 1 >= i)
			lo = i;
		else
			break;
	}
}

/*
 * Integer path: U and every weight scaled by 10^scale fit in int64, so
 * U * w fits in int128 and so does the sum of weights.  Returns false when
 * they do not fit.
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
		if (w[i] < 0)
			BadWeight(i, split->weights[i]);
		wsum += w[i];
	}
	if (wsum == 0)
		ZeroWeights(n);

	split->units = palloc_extended(Max(n, 1) * sizeof(int64), MCXT_ALLOC_HUGE);
	rems = palloc_extended(Max(n, 1) * sizeof(Remainder), MCXT_ALLOC_HUGE);
	for (i = 0; i < n; i++)
	{
		int128		p = (int128) total * w[i];

		/* 64-bit division is several times cheaper, and usually enough */
		if (p <= PG_INT64_MAX && wsum <= PG_INT64_MAX)
		{
			int64		q = (int64) p / (int64) wsum;

			split->units[i] = q;
			rems[i].rem = (int64) p - q * (int64) wsum;
		}
		else
		{
			split->units[i] = (int64) (p / wsum);
			rems[i].rem = p % wsum;
		}
		rems[i].row = i;
		given += split->units[i];
		if ((i & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
	}
	left = (int64) (total - given);
	if (left < 0 || left >= Max(n, 1))
		elog(ERROR, "allocate left " INT64_FORMAT " units over", left);
	if (left > 0)
	{
		SelectBest(rems, n, left);
		for (i = 0; i < left; i++)
			split->units[rems[i].row]++;
	}
	pfree(rems);
	pfree(w);
	return true;
}
#endif

/* Order remainders: larger first, then earlier row (numeric path). */
static int
CompareRemainderNum(const void *a, const void *b)
{
	const RemainderNum *x = (const RemainderNum *) a;
	const RemainderNum *y = (const RemainderNum *) b;
	int			c = NumCmp(y->rem, x->rem);

	if (c != 0)
		return c;
	return x->row < y->row ? -1 : (x->row > y->row);
}

/* Numeric path: the same steps for amounts or weights beyond int64. */
static void
SplitNumeric(Split *split, Numeric units_total)
{
	int64		n = split->n;
	Numeric		zero = int64_to_numeric(0);
	Numeric		one = int64_to_numeric(1);
	Numeric		wsum = zero;
	Numeric		left;
	RemainderNum *rems;
	int64		i;

	for (i = 0; i < n; i++)
	{
		if (NumCmp(split->weights[i], zero) < 0)
			BadWeight(i, split->weights[i]);
		wsum = DatumGetNumeric(DirectFunctionCall2(numeric_add, NumericGetDatum(wsum),
												   NumericGetDatum(split->weights[i])));
	}
	if (NumCmp(wsum, zero) == 0)
		ZeroWeights(n);

	left = units_total;
	split->units_num = palloc_extended(Max(n, 1) * sizeof(Numeric), MCXT_ALLOC_HUGE);
	rems = palloc_extended(Max(n, 1) * sizeof(RemainderNum), MCXT_ALLOC_HUGE);
	for (i = 0; i < n; i++)
	{
		Numeric		p = NumMul(units_total, split->weights[i]);
		Numeric		q = DatumGetNumeric(DirectFunctionCall2(numeric_div_trunc,
															NumericGetDatum(p),
															NumericGetDatum(wsum)));

		split->units_num[i] = q;
		rems[i].rem = DatumGetNumeric(DirectFunctionCall2(numeric_sub, NumericGetDatum(p),
														  NumericGetDatum(NumMul(q, wsum))));
		rems[i].row = i;
		left = DatumGetNumeric(DirectFunctionCall2(numeric_sub, NumericGetDatum(left),
												   NumericGetDatum(q)));
		CHECK_FOR_INTERRUPTS();
	}
	/* fewer than n units are left, so the count fits in int64 */
	qsort(rems, n, sizeof(RemainderNum), CompareRemainderNum);
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
	int			scale = 0;
	int64		i;

	if (!NumIsFinite(total))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("allocate total must be a finite amount"),
				 errdetail("The total given was %s.", NumText(total)),
				 errhint("Pass the cost pool's amount, or NULL for no amount.")));
	SplitSetMinor(split, minor);
	if (NumCmp(DatumGetNumeric(DirectFunctionCall2(numeric_mod, NumericGetDatum(total),
												   NumericGetDatum(minor))), zero) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("allocate total is not a whole number of minor units"),
				 errdetail("The total %s is not a multiple of the minor unit %s.",
						   NumText(total), NumText(minor)),
				 errhint("Round the total to the minor unit first, or pass a smaller minor_unit.")));

	/* weights become integers when scaled by 10^(largest scale) */
	for (i = 0; i < split->n; i++)
	{
		if (!NumIsFinite(split->weights[i]))
			BadWeight(i, split->weights[i]);
		scale = Max(scale, NumScale(split->weights[i]));
	}

	split->negative = NumCmp(total, zero) < 0;
	units_total = DatumGetNumeric(DirectFunctionCall2(numeric_div_trunc,
													  DirectFunctionCall1(numeric_abs, NumericGetDatum(total)),
													  NumericGetDatum(minor)));
#ifdef HAVE_INT128
	if (SplitInteger(split, units_total, scale))
		return;
#endif
	SplitNumeric(split, units_total);
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
/*
 * allocate(total, weights[], minor_unit): the split of an array of weights.
 * Not strict, to treat NULLs as the window form does: a NULL total (or no
 * weights array) gives NULL, a NULL minor unit is an error.
 */
Datum
allocate_array(PG_FUNCTION_ARGS)
{
	Numeric		total;
	ArrayType  *arr;
	Numeric		minor;
	Split		split = {0};
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;
	int			i;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	if (PG_ARGISNULL(2))
		NullMinorUnit();
	total = PG_GETARG_NUMERIC(0);
	arr = PG_GETARG_ARRAYTYPE_P(1);
	minor = PG_GETARG_NUMERIC(2);

	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("allocate weights must be a one-dimensional array"),
				 errdetail("The weights array has %d dimensions.", ARR_NDIM(arr))));
	deconstruct_array(arr, NUMERICOID, -1, false, TYPALIGN_INT,
					  &elems, &nulls, &nelems);
	split.n = nelems;
	split.weights = palloc(mul_size(Max(nelems, 1), sizeof(Numeric)));
	for (i = 0; i < nelems; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("allocate weight must not be null"),
					 errdetail("Element %d of the weights is null.", i + 1),
					 errhint("Use 0 for an element that gets nothing.")));
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

/*
 * Read the whole partition once and compute all shares.  A total or minor
 * unit that is a constant (or parameter) is read once, not per row.
 */
static void
AllocatePartitionCompute(WindowObject winobj, FmgrInfo *flinfo,
						 AllocatePartition *part)
{
	MemoryContext partcontext = GetMemoryChunkContext(part);
	MemoryContext oldcontext = MemoryContextSwitchTo(partcontext);
	int64		n = WinGetPartitionRowCount(winobj);
	bool		total_stable = get_fn_expr_arg_stable(flinfo, 0);
	bool		minor_stable = get_fn_expr_arg_stable(flinfo, 2);
	Numeric		total = NULL;
	Numeric		minor = NULL;
	int64		i;

	part->split.n = n;
	part->split.weights = palloc_extended(Max(n, 1) * sizeof(Numeric), MCXT_ALLOC_HUGE);

	/*
	 * One forward pass per argument: the tuplestore reads sequentially,
	 * where alternating arguments row by row would seek back and forth.
	 */
	for (i = 0; i < (total_stable ? 1 : n); i++)
	{
		bool		isnull;
		Datum		d = PartitionArg(winobj, 0, i, &isnull);

		if ((i & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
		if (i == 0)
		{
			part->null_total = isnull;
			if (!isnull)
				total = DatumGetNumericCopy(d);
		}
		else if (isnull != part->null_total ||
				 (!isnull && !NumEqual(total, DatumGetNumeric(d))))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("allocate total changes within one partition"),
					 errdetail("Row %lld has a different total than row 1.", (long long) i + 1),
					 errhint("PARTITION BY the cost pool so that every row of a partition has the same total.")));
	}
	if (part->null_total)
	{
		MemoryContextSwitchTo(oldcontext);
		part->computed = true;
		return;
	}

	for (i = 0; i < (minor_stable ? 1 : n); i++)
	{
		bool		isnull;
		Datum		d = PartitionArg(winobj, 2, i, &isnull);

		if (isnull)
			NullMinorUnit();
		if (i == 0)
			minor = DatumGetNumericCopy(d);
		else if (!NumEqual(minor, DatumGetNumeric(d)))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("allocate minor_unit changes within one partition"),
					 errdetail("Row %lld has a different minor unit than row 1.", (long long) i + 1),
					 errhint("Use one minor unit per partition.")));
	}

	for (i = 0; i < n; i++)
	{
		bool		isnull;
		Datum		d = PartitionArg(winobj, 1, i, &isnull);

		if ((i & 0xFFFF) == 0)
			CHECK_FOR_INTERRUPTS();
		if (isnull)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("allocate weight must not be null"),
					 errdetail("Row %lld of the partition has a null weight.", (long long) i + 1),
					 errhint("Use 0 for a row that gets nothing, e.g. coalesce(weight, 0).")));
		part->split.weights[i] = DatumGetNumericCopy(d);
	}
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
		AllocatePartitionCompute(winobj, fcinfo->flinfo, part);
	row = WinGetCurrentPosition(winobj);
	/* rows before this one are done with; let the tuplestore drop them */
	WinSetMarkPosition(winobj, row);
	if (part->null_total)
		PG_RETURN_NULL();
	PG_RETURN_NUMERIC(SplitShare(&part->split, row));
}
