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
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/shmem.h"		/* mul_size */
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"	/* MaxAllocSize */
#include "utils/tuplestore.h"

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

/*
 * msp_csv_records(lines text[], key_column text): the records of a CSV
 * export from its lines in order, each split once.  A quoted field may span
 * lines (an odd number of quotes on a line opens or closes one), so a
 * record is one or more lines joined by a line break.  A header is a record
 * with a field named key_column (ASCII case and surrounding spaces aside);
 * several files staged one after another each bring their own, and every
 * record is numbered with the header it falls under (0 before any).
 * Blank records are left out.  Returns (first_line, record, fields,
 * header_no, is_header): first_line counts from 1 in the array, fields is
 * NULL for a record that is not well-formed CSV.
 */

/* Does the field equal the key, ASCII case and spaces around either aside? */
static bool
CsvFieldIsKey(text *field, const char *key, int keylen)
{
	const char *p = VARDATA_ANY(field);
	const char *end = p + VARSIZE_ANY_EXHDR(field);

	while (p < end && *p == ' ')
		p++;
	while (end > p && end[-1] == ' ')
		end--;
	if (end - p != keylen)
		return false;
	return pg_strncasecmp(p, key, keylen) == 0;
}

/* Is the text blank (spaces, tabs, line breaks only)? */
static bool
CsvBlank(const char *p, const char *end)
{
	for (; p < end; p++)
		if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
			return false;
	return true;
}

/* Quotes on a line: odd opens or closes a field spanning lines. */
static int
CsvQuotes(const char *p, const char *end)
{
	int			n = 0;

	for (; p < end; p++)
		n += (*p == '"');
	return n;
}

PG_FUNCTION_INFO_V1(msp_csv_records);

/* msp_csv_records(lines text[], key_column text): see above */
Datum
msp_csv_records(PG_FUNCTION_ARGS)
{
	ArrayType  *lines_arr = PG_GETARG_ARRAYTYPE_P(0);
	text	   *key_text = PG_GETARG_TEXT_PP(1);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Tuplestorestate *ts;
	TupleDesc	desc;
	MemoryContext oldcxt;
	MemoryContext rowcxt;
	Datum	   *line_datums;
	bool	   *line_nulls;
	int			nlines;
	const char *key;
	int			keylen;
	int			header_no = 0;
	StringInfoData rec;
	int			i;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		(rsinfo->allowedModes & SFRM_Materialize) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("msp_csv_records must be called in FROM")));
	if (ARR_NDIM(lines_arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("msp_csv_records lines must be a one-dimensional array")));
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "msp_csv_records: return type must be a row type");

	oldcxt = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	desc = CreateTupleDescCopy(desc);
	ts = tuplestore_begin_heap(true, false, work_mem);
	MemoryContextSwitchTo(oldcxt);
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = ts;
	rsinfo->setDesc = desc;

	/* the key without the spaces around it */
	key = VARDATA_ANY(key_text);
	keylen = VARSIZE_ANY_EXHDR(key_text);
	while (keylen > 0 && *key == ' ')
		key++, keylen--;
	while (keylen > 0 && key[keylen - 1] == ' ')
		keylen--;

	deconstruct_array(lines_arr, TEXTOID, -1, false, TYPALIGN_INT, &line_datums, &line_nulls, &nlines);
	/* each record's arrays are freed once it is stored */
	rowcxt = AllocSetContextCreate(CurrentMemoryContext, "msp_csv_records row", ALLOCSET_DEFAULT_SIZES);
	initStringInfo(&rec);
	i = 0;
	while (i < nlines)
	{
		int			first = i;
		bool		inside = false;
		const char *p;
		const char *end;
		Datum		values[5];
		bool		nulls[5] = {false, false, false, false, false};
		Datum	   *fields;
		int			nfields;
		bool		is_header = false;

		CHECK_FOR_INTERRUPTS();
		/* one record: lines until the quotes balance (or the stage ends) */
		resetStringInfo(&rec);
		do
		{
			if (!line_nulls[i])
			{
				text	   *t = DatumGetTextPP(line_datums[i]);
				const char *lp = VARDATA_ANY(t);
				const char *le = lp + VARSIZE_ANY_EXHDR(t);

				if (i > first)
				{
					if ((Size) rec.len + 1 >= MaxAllocSize - VARHDRSZ)
						ereport(ERROR,
								(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
								 errmsg("CSV record too large"),
								 errdetail("A quoted field opened on staged line %d never closes within %zu bytes.",
										   first + 1, (Size) (MaxAllocSize - VARHDRSZ)),
								 errhint("Check the quotes of the export.")));
					appendStringInfoChar(&rec, '\n');
				}
				if ((Size) rec.len + (le - lp) >= MaxAllocSize - VARHDRSZ)
					ereport(ERROR,
							(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
							 errmsg("CSV record too large"),
							 errdetail("A quoted field opened on staged line %d never closes within %zu bytes.",
									   first + 1, (Size) (MaxAllocSize - VARHDRSZ)),
							 errhint("Check the quotes of the export.")));
				appendBinaryStringInfo(&rec, lp, le - lp);
				if (CsvQuotes(lp, le) % 2 == 1)
					inside = !inside;
			}
			else if (i > first)
				appendStringInfoChar(&rec, '\n');
			i++;
		} while (inside && i < nlines);

		if (CsvBlank(rec.data, rec.data + rec.len))
			continue;
		oldcxt = MemoryContextSwitchTo(rowcxt);
		p = rec.data;
		end = p + rec.len;
		/* Microsoft's CSV reports begin with a UTF-8 byte-order mark */
		if (end - p >= 3 && (unsigned char) p[0] == 0xEF && (unsigned char) p[1] == 0xBB &&
			(unsigned char) p[2] == 0xBF)
			p += 3;
		values[0] = Int32GetDatum(first + 1);
		values[1] = PointerGetDatum(cstring_to_text_with_len(rec.data, rec.len));
		if (CsvSplit(p, end, &fields, &nfields))
		{
			int			f;

			for (f = 0; f < nfields && !is_header; f++)
				is_header = CsvFieldIsKey(DatumGetTextPP(fields[f]), key, keylen);
			values[2] = PointerGetDatum(construct_array(fields, nfields, TEXTOID, -1, false, TYPALIGN_INT));
		}
		else
			nulls[2] = true;
		if (is_header)
			header_no++;
		values[3] = Int32GetDatum(header_no);
		values[4] = BoolGetDatum(is_header);
		tuplestore_putvalues(ts, desc, values, nulls);
		MemoryContextSwitchTo(oldcxt);
		MemoryContextReset(rowcxt);
	}
	MemoryContextDelete(rowcxt);
	return (Datum) 0;
}
