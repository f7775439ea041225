/*
 * userset.h
 *	  The exact set of member ids behind every billable-user count.
 *
 * A userset is stored as a varlena: a small fixed header, then its members
 * sorted ascending, the first as a zigzag varint and each next one as the
 * varint of (gap - 1).  Dense ids therefore cost one byte each, and the
 * encoding is canonical, so equal sets have equal bytes.
 *
 * While aggregating, members live in an IdSet (idset.h) instead.
 */
#ifndef MSPBILL_USERSET_H
#define MSPBILL_USERSET_H

#include "postgres.h"
#include "fmgr.h"
#if PG_VERSION_NUM >= 160000
#include "varatt.h"
#endif

#define USERSET_VERSION 1

typedef struct Userset
{
	int32		vl_len_;		/* varlena header (do not touch directly) */
	uint8		version;		/* USERSET_VERSION */
	uint8		flags;			/* reserved, must be 0 */
	uint16		reserved;		/* reserved, must be 0 */
	uint32		count;			/* number of members */
	uint8		data[FLEXIBLE_ARRAY_MEMBER];	/* varint-encoded members */
} Userset;

#define USERSET_HEADER_SIZE offsetof(Userset, data)

#define DatumGetUserset(d)		((Userset *) PG_DETOAST_DATUM(d))
#define PG_GETARG_USERSET(n)	DatumGetUserset(PG_GETARG_DATUM(n))
#define PG_RETURN_USERSET(u)	PG_RETURN_POINTER(u)

/* Sequential reader over a stored userset; distrusts every byte. */
typedef struct UsersetReader
{
	const uint8 *pos;
	const uint8 *end;
	uint32		left;			/* members not yet read */
	int64		prev;			/* last member returned */
	bool		started;
} UsersetReader;

extern void UsersetReaderInit(UsersetReader *reader, const Userset *set);
extern bool UsersetReaderNext(UsersetReader *reader, int64 *member);
extern int64 *UsersetToArray(const Userset *set, uint32 *count);
extern Userset *UsersetFromSorted(const int64 *members, uint64 count);
extern Userset *UsersetFromUnsorted(int64 *members, uint64 count);
extern Userset *UsersetUnion(Userset *a, Userset *b);
extern int64 UsersetHashText(const text *t);
extern uint64 UsersetHashBytes(const uint8 *bytes, Size len);

#endif							/* MSPBILL_USERSET_H */
