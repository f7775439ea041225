/*
 * varint.h
 *	  The LEB128 varint and zigzag helpers shared by the stored userset and
 *	  the serialized aggregate states, so both encode members the same way.
 */
#ifndef MSPBILL_VARINT_H
#define MSPBILL_VARINT_H

#include "postgres.h"

/* Number of bytes VarintWrite will use for v. */
static inline int
VarintSize(uint64 v)
{
	int			size = 1;

	while (v >= 0x80)
	{
		v >>= 7;
		size++;
	}
	return size;
}

/* Write v as LEB128 and return the position after it. */
static inline uint8 *
VarintWrite(uint8 *out, uint64 v)
{
	while (v >= 0x80)
	{
		*out++ = (uint8) (v | 0x80);
		v >>= 7;
	}
	*out++ = (uint8) v;
	return out;
}

/*
 * Read one LEB128 varint from *pos, never past end and never beyond 64
 * bits.  Returns false (leaving *pos anywhere) on malformed bytes.
 */
static inline bool
VarintRead(const uint8 **pos, const uint8 *end, uint64 *value)
{
	uint64		result = 0;
	int			shift = 0;
	const uint8 *p = *pos;

	for (;;)
	{
		uint8		byte;

		if (p >= end)
			return false;
		byte = *p++;
		if (shift == 63 && (byte & 0x7E) != 0)
			return false;
		result |= ((uint64) (byte & 0x7F)) << shift;
		if ((byte & 0x80) == 0)
			break;
		shift += 7;
		if (shift > 63)
			return false;
	}
	*pos = p;
	*value = result;
	return true;
}

static inline uint64
ZigZag(int64 v)
{
	return ((uint64) v << 1) ^ (uint64) (v >> 63);
}

static inline int64
UnZigZag(uint64 v)
{
	return (int64) (v >> 1) ^ -(int64) (v & 1);
}

#endif							/* MSPBILL_VARINT_H */
