// Package mpcheck checks that msgpack bytes from a peer are well formed before they are decoded.
//
// vmihailenco/msgpack v5.4.1 sizes a decoded slice from the length its header declares: its
// allocation limit never applies (decode_slice.go tests `d.flags&disableAllocLimitFlag != 1`,
// which is always true). A 14-byte entry declaring an array of 2.8 billion structs made the
// decoder ask for 200 GB and killed the process (found by FuzzApply). Check walks the value
// once, without decoding it, and refuses any header that claims more elements or bytes than the
// input still holds. Every element takes at least one byte, so after Check no allocation while
// decoding exceeds the input's length times the size of one element.
package mpcheck

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrMalformed is returned for bytes that are not one complete msgpack value.
var ErrMalformed = errors.New("malformed msgpack")

// Check verifies that b starts with one complete msgpack value whose every length fits in b, and
// returns how many bytes that value takes (what follows it is the caller's business). It is a
// single pass with no recursion and no allocation: a stack of nested values is just a count of
// values still to read.
func Check(b []byte) (int, error) {
	pos, need := 0, 1 // values still to read
	for need > 0 {
		if pos >= len(b) {
			return 0, fmt.Errorf("%w: ends %d values short at byte %d", ErrMalformed, need, pos)
		}
		c := b[pos]
		pos++
		need--
		var skip, elems int // bytes of payload to skip; values it contains
		switch {
		case c <= 0x7f, c >= 0xe0, c == 0xc0, c == 0xc2, c == 0xc3: // fixints, nil, bools
		case c <= 0x8f: // fixmap
			elems = 2 * int(c&0x0f)
		case c <= 0x9f: // fixarray
			elems = int(c & 0x0f)
		case c <= 0xbf: // fixstr
			skip = int(c & 0x1f)
		default:
			var err error
			if skip, elems, pos, err = header(b, pos, c); err != nil {
				return 0, err
			}
		}
		if skip > len(b)-pos {
			return 0, fmt.Errorf("%w: byte %d declares %d bytes, %d remain", ErrMalformed, pos, skip, len(b)-pos)
		}
		pos += skip
		// Every value still to read takes at least one byte.
		if elems > len(b)-pos-need {
			return 0, fmt.Errorf("%w: byte %d declares %d values, %d bytes remain", ErrMalformed, pos, elems, len(b)-pos)
		}
		need += elems
	}
	return pos, nil
}

// header reads the length that follows a type byte c in 0xc1..0xdf at b[pos:], and returns the
// payload bytes to skip, the values the payload holds, and the position after the length.
func header(b []byte, pos int, c byte) (skip, elems, next int, err error) {
	// width of the length field, fixed payload size, bytes of ext type, is a container of pairs
	var width, fixed, ext int
	pairs, container := false, false
	switch c {
	case 0xc4, 0xd9: // bin8, str8
		width = 1
	case 0xc5, 0xda:
		width = 2
	case 0xc6, 0xdb:
		width = 4
	case 0xc7:
		width, ext = 1, 1
	case 0xc8:
		width, ext = 2, 1
	case 0xc9:
		width, ext = 4, 1
	case 0xca, 0xd2:
		fixed = 4
	case 0xcb, 0xcf, 0xd3:
		fixed = 8
	case 0xcc, 0xd0:
		fixed = 1
	case 0xcd, 0xd1:
		fixed = 2
	case 0xce:
		fixed = 4
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1, 2, 4, 8, 16
		fixed = 1 + 1<<(c-0xd4)
	case 0xdc:
		width, container = 2, true
	case 0xdd:
		width, container = 4, true
	case 0xde:
		width, container, pairs = 2, true, true
	case 0xdf:
		width, container, pairs = 4, true, true
	default: // 0xc1 is never used
		return 0, 0, 0, fmt.Errorf("%w: byte %d is the unused type 0x%02x", ErrMalformed, pos-1, c)
	}
	if fixed > 0 {
		return fixed, 0, pos, nil
	}
	if width > len(b)-pos {
		return 0, 0, 0, fmt.Errorf("%w: a length at byte %d is cut off", ErrMalformed, pos)
	}
	var n uint64
	switch width {
	case 1:
		n = uint64(b[pos])
	case 2:
		n = uint64(binary.BigEndian.Uint16(b[pos:]))
	case 4:
		n = uint64(binary.BigEndian.Uint32(b[pos:]))
	}
	pos += width
	if n > uint64(len(b)) { // larger than the whole input: refuse before any int arithmetic
		return 0, 0, 0, fmt.Errorf("%w: byte %d declares %d, the input has %d bytes", ErrMalformed, pos-width, n, len(b))
	}
	switch {
	case !container:
		return int(n) + ext, 0, pos, nil
	case pairs:
		return 0, 2 * int(n), pos, nil
	default:
		return 0, int(n), pos, nil
	}
}
