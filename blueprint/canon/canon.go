package canon

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
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
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var out bytes.Buffer
	out.Grow(len(data))
	if err := copyValue(dec, &out, 0); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing data after the top-level value", ErrSyntax)
	}
	return out.Bytes(), nil
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

// copyValue reads one value from dec and writes its canonical form to out.
func copyValue(dec *json.Decoder, out *bytes.Buffer, depth int) error {
	tok, err := dec.Token()
	if err != nil {
		return syntaxErr(err)
	}
	return copyToken(dec, tok, out, depth)
}

func copyToken(dec *json.Decoder, tok json.Token, out *bytes.Buffer, depth int) error {
	switch v := tok.(type) {
	case json.Delim:
		if depth >= MaxDepth {
			return fmt.Errorf("%w: nesting deeper than %d levels", ErrSyntax, MaxDepth)
		}
		switch v {
		case '{':
			return copyObject(dec, out, depth+1)
		case '[':
			return copyArray(dec, out, depth+1)
		default:
			return fmt.Errorf("%w: unexpected %q", ErrSyntax, rune(v))
		}
	case string:
		writeString(out, v)
	case json.Number:
		s, err := formatNumber(string(v))
		if err != nil {
			return err
		}
		out.WriteString(s)
	case bool:
		if v {
			out.WriteString("true")
		} else {
			out.WriteString("false")
		}
	case nil:
		out.WriteString("null")
	default:
		return fmt.Errorf("%w: unexpected token %v", ErrSyntax, tok)
	}
	return nil
}

type member struct {
	key string
	val []byte
}

func copyObject(dec *json.Decoder, out *bytes.Buffer, depth int) error {
	var members []member
	seen := make(map[string]struct{})
	for {
		tok, err := dec.Token()
		if err != nil {
			return syntaxErr(err)
		}
		if d, ok := tok.(json.Delim); ok && d == '}' {
			break
		}
		key, ok := tok.(string)
		if !ok {
			return fmt.Errorf("%w: object key is not a string", ErrSyntax)
		}
		if _, dup := seen[key]; dup {
			return fmt.Errorf("%w: duplicate object key %q", ErrSyntax, key)
		}
		seen[key] = struct{}{}
		var val bytes.Buffer
		if err := copyValue(dec, &val, depth); err != nil {
			return err
		}
		members = append(members, member{key: key, val: val.Bytes()})
	}
	sort.Slice(members, func(i, j int) bool { return members[i].key < members[j].key })
	out.WriteByte('{')
	for i, m := range members {
		if i > 0 {
			out.WriteByte(',')
		}
		writeString(out, m.key)
		out.WriteByte(':')
		out.Write(m.val)
	}
	out.WriteByte('}')
	return nil
}

func copyArray(dec *json.Decoder, out *bytes.Buffer, depth int) error {
	out.WriteByte('[')
	for i := 0; ; i++ {
		tok, err := dec.Token()
		if err != nil {
			return syntaxErr(err)
		}
		if d, ok := tok.(json.Delim); ok && d == ']' {
			break
		}
		if i > 0 {
			out.WriteByte(',')
		}
		if err := copyToken(dec, tok, out, depth); err != nil {
			return err
		}
	}
	out.WriteByte(']')
	return nil
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

// writeString writes s as a JSON string with minimal escaping.
func writeString(out *bytes.Buffer, s string) {
	out.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			out.WriteByte('\\')
			out.WriteByte(c)
		case c >= 0x20:
			out.WriteByte(c)
		case c == '\b':
			out.WriteString(`\b`)
		case c == '\f':
			out.WriteString(`\f`)
		case c == '\n':
			out.WriteString(`\n`)
		case c == '\r':
			out.WriteString(`\r`)
		case c == '\t':
			out.WriteString(`\t`)
		default:
			out.WriteString(`\u00`)
			out.WriteByte(hexDigits[c>>4])
			out.WriteByte(hexDigits[c&0xf])
		}
	}
	out.WriteByte('"')
}

func syntaxErr(err error) error {
	if err == io.EOF {
		return fmt.Errorf("%w: unexpected end of document", ErrSyntax)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("%w: %v (at byte %d)", ErrSyntax, se, se.Offset)
	}
	return fmt.Errorf("%w: %v", ErrSyntax, err)
}
