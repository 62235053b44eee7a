package canon

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxDepth is the deepest nesting of arrays and objects accepted.
const MaxDepth = 64

// maxExactInt is 2^53: floats of smaller magnitude represent every integer
// exactly, so an integral value below it is written as an integer.
const maxExactInt = 1 << 53

// Canonicalize parses data and returns its canonical bytes (see the package
// documentation). The result is a new slice; data is not modified.
func Canonicalize(data []byte) ([]byte, error) {
	if !utf8.Valid(data) {
		return nil, fmt.Errorf("%w: document is not valid UTF-8", ErrSyntax)
	}
	sc := scanner{data: data}
	out, err := sc.value(make([]byte, 0, len(data)), 0)
	if err != nil {
		return nil, err
	}
	sc.skipSpace()
	if sc.pos != len(data) {
		return nil, fmt.Errorf("%w: trailing data after the top-level value", ErrSyntax)
	}
	return out, nil
}

// Marshal encodes v with encoding/json and canonicalises the result.
func Marshal(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("canon: marshal: %w", err)
	}
	return Canonicalize(raw)
}

// ID returns the lowercase hex SHA-256 of b. Callers pass canonical bytes to
// obtain a content id.
func ID(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// IsID reports whether s has the form of an id: 64 lowercase hex digits.
func IsID(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// appendNumber appends the canonical spelling of a JSON number literal
// (checked against JSON's grammar by the scanner). An integer literal of at
// most 18 digits other than -0 is its own canonical spelling (the grammar
// allows no leading zero, and it fits an int64), so it is copied as is.
func appendNumber(out, lit []byte) ([]byte, error) {
	digits := len(lit)
	if digits > 0 && lit[0] == '-' {
		digits--
	}
	if digits <= 18 && bytes.IndexAny(lit, ".eE") < 0 && string(lit) != "-0" {
		return append(out, lit...), nil
	}
	num, err := formatNumber(string(lit))
	if err != nil {
		return nil, err
	}
	return append(out, num...), nil
}

// formatNumber returns the canonical spelling of a JSON number literal.
func formatNumber(lit string) (string, error) {
	if !strings.ContainsAny(lit, ".eE") {
		if n, err := strconv.ParseInt(lit, 10, 64); err == nil {
			return strconv.FormatInt(n, 10), nil
		}
	}
	f, err := strconv.ParseFloat(lit, 64)
	if err != nil || math.IsInf(f, 0) {
		return "", fmt.Errorf("%w: number %s is out of range", ErrSyntax, lit)
	}
	if f == math.Trunc(f) && math.Abs(f) < maxExactInt {
		return strconv.FormatInt(int64(f), 10), nil
	}
	return strconv.FormatFloat(f, 'g', -1, 64), nil
}

const hexDigits = "0123456789abcdef"

// AppendString appends s, valid UTF-8, as a canonical JSON string (minimal
// escaping), as Canonicalize writes it. Callers check validity: invalid
// UTF-8 would be copied as is, where encoding/json writes U+FFFD.
func AppendString(out []byte, s string) []byte { return appendString(out, s) }

// AppendInt appends n as Canonicalize writes an integer.
func AppendInt(out []byte, n int64) []byte { return strconv.AppendInt(out, n, 10) }

// AppendFloat appends the finite f as Canonicalize writes the number
// encoding/json writes for it (an integral value of magnitude below 2^53 as
// an integer, any other in the shortest form that reads back exactly).
func AppendFloat(out []byte, f float64) []byte {
	if f == math.Trunc(f) && math.Abs(f) < maxExactInt {
		return strconv.AppendInt(out, int64(f), 10)
	}
	return strconv.AppendFloat(out, f, 'g', -1, 64)
}

// appendString appends s as a JSON string with minimal escaping.
func appendString[S ~string | ~[]byte](out []byte, s S) []byte {
	out = append(out, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			out = append(out, '\\', c)
		case c >= 0x20:
			out = append(out, c)
		case c == '\b':
			out = append(out, '\\', 'b')
		case c == '\f':
			out = append(out, '\\', 'f')
		case c == '\n':
			out = append(out, '\\', 'n')
		case c == '\r':
			out = append(out, '\\', 'r')
		case c == '\t':
			out = append(out, '\\', 't')
		default:
			out = append(out, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
	}
	return append(out, '"')
}
