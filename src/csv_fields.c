/*
 * csv_fields.c
 *	  msp_csv_fields(record text): the fields of one CSV record (RFC 4180:
 *	  comma-separated, double-quoted fields with "" for a quote, line breaks
 *	  allowed inside quotes) as a text array, or NULL when the record is
 *	  not well-formed CSV.
 *
 * The licence and subscription exports (Microsoft 365 admin center, the
 * usage reports, Pax8) are CSV files whose columns differ by version and
 * by who saved them.  The loaders stage each line as it is and find the
 * columns by the header's names; this splits a record in one pass.  A
 * UTF-8 byte-order mark before the first field (Microsoft's reports start
 * with one) is dropped.
 */
#include "postgres.h"

#if PG_VERSION_NUM >= 160000
#include "varatt.h"
#endif

#include "catalog/pg_type.h"
#include "lib/stringinfo.h"
#include "storage/shmem.h"		/* mul_size */
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"	/* MaxAllocSize */

/* Split src[0..len) into fields; false when a quote is misplaced or open. */
static bool
CsvSplit(const char *p, const char *end, Datum **values, int *nfields)
{
	StringInfoData field;
	int			cap = 16;
	int			n = 0;
	Datum	   *out = palloc(mul_size(cap, sizeof(Datum)));

	initStringInfo(&field);
	for (;;)
	{
		resetStringInfo(&field);
		if (p < end && *p == '"')
		{
			p++;
			for (;;)
			{
				const char *run = p;

				while (p < end && *p != '"')
					p++;
				appendBinaryStringInfo(&field, run, p - run);
				if (p >= end)
					return false;	/* the quote never closes */
				p++;
				if (p < end && *p == '"')
				{
					appendStringInfoChar(&field, '"');
					p++;
					continue;
				}
				break;
			}
			/* after a closing quote: the end of the field or of the record */
			if (p < end && *p != ',' && *p != '\r' && *p != '\n')
				return false;
		}
		else
		{
			const char *run = p;

			while (p < end && *p != ',' && *p != '\r' && *p != '\n')
			{
				if (*p == '"')
					return false;	/* a bare quote inside a field */
				p++;
			}
			appendBinaryStringInfo(&field, run, p - run);
		}
		if (n == cap)
		{
			if ((Size) cap >= MaxAllocSize / sizeof(Datum) / 2)
				return false;
			cap *= 2;
			out = repalloc(out, mul_size(cap, sizeof(Datum)));
		}
		out[n++] = PointerGetDatum(cstring_to_text_with_len(field.data, field.len));
		if (p < end && *p == ',')
		{
			p++;
			continue;
		}
		/* a line break may end the record (a trailing CR or LF) */
		while (p < end && (*p == '\r' || *p == '\n'))
			p++;
		if (p < end)
			return false;		/* more after a line break: not one record */
		break;
	}
	*values = out;
	*nfields = n;
	return true;
}

PG_FUNCTION_INFO_V1(msp_csv_fields);

/* msp_csv_fields(record text) returns text[] */
Datum
msp_csv_fields(PG_FUNCTION_ARGS)
{
	text	   *rec = PG_GETARG_TEXT_PP(0);
	const char *p = VARDATA_ANY(rec);
	const char *end = p + VARSIZE_ANY_EXHDR(rec);
	Datum	   *values;
	int			n;

	/* Microsoft's CSV reports begin with a UTF-8 byte-order mark */
	if (end - p >= 3 && (unsigned char) p[0] == 0xEF && (unsigned char) p[1] == 0xBB &&
		(unsigned char) p[2] == 0xBF)
		p += 3;
	if (!CsvSplit(p, end, &values, &n))
		PG_RETURN_NULL();
	PG_RETURN_ARRAYTYPE_P(construct_array(values, n, TEXTOID, -1, false, TYPALIGN_INT));
}
