package canon

import (
	"bytes"
	"fmt"
	"slices"
	"unicode/utf16"
	"unicode/utf8"
)

// scanner reads one JSON document byte by byte and writes its canonical form.
// It accepts exactly what encoding/json accepts (RFC 8259), decodes strings as
// encoding/json does (a lone surrogate escape becomes U+FFFD), and leaves
// UTF-8 validation of the whole document to its caller.
type scanner struct {
	data []byte
	pos  int
	// vals and members are the scratch buffers of the objects being
	// scanned, one per nesting depth, reused by the next object at that
	// depth (an object's canonical form is copied out before its next
	// sibling starts).
	vals    [][]byte
	members [][]member
}

func (s *scanner) errorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s (at byte %d)", ErrSyntax, fmt.Sprintf(format, args...), s.pos)
}

func (s *scanner) skipSpace() {
	for s.pos < len(s.data) {
		switch s.data[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// value appends the canonical form of the value at s.pos to out; depth is
// the number of arrays and objects it is nested in.
func (s *scanner) value(out []byte, depth int) ([]byte, error) {
	s.skipSpace()
	if s.pos >= len(s.data) {
		return nil, fmt.Errorf("%w: unexpected end of document", ErrSyntax)
	}
	switch c := s.data[s.pos]; {
	case c == '{' || c == '[':
		if depth >= MaxDepth {
			return nil, fmt.Errorf("%w: nesting deeper than %d levels", ErrSyntax, MaxDepth)
		}
		if c == '{' {
			return s.object(out, depth+1)
		}
		return s.array(out, depth+1)
	case c == '"':
		str, raw, err := s.str()
		if err != nil {
			return nil, err
		}
		if raw {
			// No escape and no control character: the canonical form is the literal itself.
			return append(append(append(out, '"'), str...), '"'), nil
		}
		return appendString(out, str), nil
	case c == '-' || (c >= '0' && c <= '9'):
		lit, err := s.number()
		if err != nil {
			return nil, err
		}
		return appendNumber(out, lit)
	default:
		for _, word := range [...]string{"true", "false", "null"} {
			if string(s.data[s.pos:min(len(s.data), s.pos+len(word))]) == word {
				s.pos += len(word)
				return append(out, word...), nil
			}
		}
		return nil, s.errorf("invalid character %q looking for the beginning of a value", c)
	}
}

// member is one object member: its decoded key and where its canonical value
// lies in the object's scratch buffer.
type member struct {
	key    []byte
	lo, hi int
}

func (s *scanner) object(out []byte, depth int) ([]byte, error) {
	s.pos++ // '{'
	s.skipSpace()
	if s.pos < len(s.data) && s.data[s.pos] == '}' {
		s.pos++
		return append(out, '{', '}'), nil
	}
	for len(s.vals) <= depth {
		s.vals = append(s.vals, nil)
		s.members = append(s.members, nil)
	}
	members, vals := s.members[depth][:0], s.vals[depth][:0]
	for {
		s.skipSpace()
		if s.pos >= len(s.data) || s.data[s.pos] != '"' {
			if s.pos >= len(s.data) {
				return nil, fmt.Errorf("%w: unexpected end of document", ErrSyntax)
			}
			return nil, s.errorf("object key is not a string")
		}
		key, _, err := s.str()
		if err != nil {
			return nil, err
		}
		s.skipSpace()
		if s.pos >= len(s.data) || s.data[s.pos] != ':' {
			return nil, s.errorf("expected ':' after object key")
		}
		s.pos++
		lo := len(vals)
		if vals, err = s.value(vals, depth); err != nil {
			return nil, err
		}
		members = append(members, member{key: key, lo: lo, hi: len(vals)})
		s.skipSpace()
		if s.pos >= len(s.data) {
			return nil, fmt.Errorf("%w: unexpected end of document", ErrSyntax)
		}
		if s.data[s.pos] == '}' {
			s.pos++
			break
		}
		if s.data[s.pos] != ',' {
			return nil, s.errorf("expected ',' or '}' after object value")
		}
		s.pos++
	}
	s.members[depth], s.vals[depth] = members, vals // kept for the next object at this depth
	slices.SortFunc(members, func(a, b member) int { return bytes.Compare(a.key, b.key) })
	out = append(out, '{')
	for i, m := range members {
		if i > 0 {
			if bytes.Equal(m.key, members[i-1].key) {
				return nil, fmt.Errorf("%w: duplicate object key %q", ErrSyntax, m.key)
			}
			out = append(out, ',')
		}
		out = appendString(out, m.key)
		out = append(out, ':')
		out = append(out, vals[m.lo:m.hi]...)
	}
	return append(out, '}'), nil
}

func (s *scanner) array(out []byte, depth int) ([]byte, error) {
	s.pos++ // '['
	out = append(out, '[')
	s.skipSpace()
	if s.pos < len(s.data) && s.data[s.pos] == ']' {
		s.pos++
		return append(out, ']'), nil
	}
	for i := 0; ; i++ {
		if i > 0 {
			out = append(out, ',')
		}
		var err error
		if out, err = s.value(out, depth); err != nil {
			return nil, err
		}
		s.skipSpace()
		if s.pos >= len(s.data) {
			return nil, fmt.Errorf("%w: unexpected end of document", ErrSyntax)
		}
		if s.data[s.pos] == ']' {
			s.pos++
			return append(out, ']'), nil
		}
		if s.data[s.pos] != ',' {
			return nil, s.errorf("expected ',' or ']' after array element")
		}
		s.pos++
	}
}

// number returns the number literal at s.pos, checked against JSON's grammar:
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() ([]byte, error) {
	start := s.pos
	if s.peek() == '-' {
		s.pos++
	}
	switch c := s.peek(); {
	case c == '0':
		s.pos++
	case c >= '1' && c <= '9':
		s.digits()
	default:
		return nil, s.errorf("invalid number")
	}
	if s.peek() == '.' {
		s.pos++
		if !s.digits() {
			return nil, s.errorf("invalid number: no digit after the decimal point")
		}
	}
	if c := s.peek(); c == 'e' || c == 'E' {
		s.pos++
		if c := s.peek(); c == '+' || c == '-' {
			s.pos++
		}
		if !s.digits() {
			return nil, s.errorf("invalid number: no digit in the exponent")
		}
	}
	return s.data[start:s.pos:s.pos], nil
}

// peek returns the byte at s.pos, or 0 at the end.
func (s *scanner) peek() byte {
	if s.pos < len(s.data) {
		return s.data[s.pos]
	}
	return 0
}

// digits skips decimal digits and reports whether there was one.
func (s *scanner) digits() bool {
	start := s.pos
	for s.pos < len(s.data) && s.data[s.pos] >= '0' && s.data[s.pos] <= '9' {
		s.pos++
	}
	return s.pos > start
}

// str decodes the string at s.pos. raw reports that the literal held no
// escape: the result is then a slice of the document (not to be modified).
func (s *scanner) str() (str []byte, raw bool, err error) {
	s.pos++ // '"'
	start := s.pos
	// Fast path: no escape.
	for s.pos < len(s.data) {
		c := s.data[s.pos]
		if c == '"' {
			str := s.data[start:s.pos:s.pos]
			s.pos++
			return str, true, nil
		}
		if c == '\\' {
			break
		}
		if c < 0x20 {
			return nil, false, s.errorf("invalid control character %q in string", c)
		}
		s.pos++
	}
	buf := slices.Clone(s.data[start:s.pos])
	for s.pos < len(s.data) {
		c := s.data[s.pos]
		switch {
		case c == '"':
			s.pos++
			return buf, false, nil
		case c < 0x20:
			return nil, false, s.errorf("invalid control character %q in string", c)
		case c != '\\':
			buf = append(buf, c)
			s.pos++
			continue
		}
		s.pos++ // '\\'
		if s.pos >= len(s.data) {
			break
		}
		e := s.data[s.pos]
		s.pos++
		switch e {
		case '"', '\\', '/':
			buf = append(buf, e)
		case 'b':
			buf = append(buf, '\b')
		case 'f':
			buf = append(buf, '\f')
		case 'n':
			buf = append(buf, '\n')
		case 'r':
			buf = append(buf, '\r')
		case 't':
			buf = append(buf, '\t')
		case 'u':
			r, ok := s.hex4()
			if !ok {
				return nil, false, s.errorf("invalid \\u escape in string")
			}
			if utf16.IsSurrogate(r) {
				// A pair makes one rune; a lone half is U+FFFD, as encoding/json decodes it.
				save := s.pos
				if s.peek() == '\\' && s.pos+1 < len(s.data) && s.data[s.pos+1] == 'u' {
					s.pos += 2
					if r2, ok := s.hex4(); ok {
						if d := utf16.DecodeRune(r, r2); d != utf8.RuneError {
							buf = utf8.AppendRune(buf, d)
							continue
						}
					}
				}
				s.pos = save
				r = utf8.RuneError
			}
			buf = utf8.AppendRune(buf, r)
		default:
			return nil, false, s.errorf("invalid escape '\\%c' in string", e)
		}
	}
	return nil, false, fmt.Errorf("%w: unexpected end of document in a string", ErrSyntax)
}

// hex4 reads four hex digits.
func (s *scanner) hex4() (rune, bool) {
	if s.pos+4 > len(s.data) {
		return 0, false
	}
	var r rune
	for _, c := range s.data[s.pos : s.pos+4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	s.pos += 4
	return r, true
}
