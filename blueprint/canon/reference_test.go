package canon_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/esper-morph/esper/blueprint/canon"
)

// referenceCanonicalize is an independent canonicaliser built on
// encoding/json's tokenizer: the fuzz target checks that Canonicalize's own
// scanner accepts, refuses and writes exactly what it does.
func referenceCanonicalize(data []byte) ([]byte, error) {
	if !utf8.Valid(data) {
		return nil, fmt.Errorf("%w: document is not valid UTF-8", canon.ErrSyntax)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var out bytes.Buffer
	if err := refValue(dec, &out, 0); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing data after the top-level value", canon.ErrSyntax)
	}
	return out.Bytes(), nil
}

func refValue(dec *json.Decoder, out *bytes.Buffer, depth int) error {
	tok, err := dec.Token()
	if err != nil {
		return refSyntaxErr(err)
	}
	return refToken(dec, tok, out, depth)
}

func refToken(dec *json.Decoder, tok json.Token, out *bytes.Buffer, depth int) error {
	switch v := tok.(type) {
	case json.Delim:
		if depth >= canon.MaxDepth {
			return fmt.Errorf("%w: nesting deeper than %d levels", canon.ErrSyntax, canon.MaxDepth)
		}
		switch v {
		case '{':
			return refObject(dec, out, depth+1)
		case '[':
			return refArray(dec, out, depth+1)
		default:
			return fmt.Errorf("%w: unexpected %q", canon.ErrSyntax, rune(v))
		}
	case string:
		refString(out, v)
	case json.Number:
		s, err := refNumber(string(v))
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
		return fmt.Errorf("%w: unexpected token %v", canon.ErrSyntax, tok)
	}
	return nil
}

type refMember struct {
	key string
	val []byte
}

func refObject(dec *json.Decoder, out *bytes.Buffer, depth int) error {
	var members []refMember
	seen := make(map[string]struct{})
	for {
		tok, err := dec.Token()
		if err != nil {
			return refSyntaxErr(err)
		}
		if d, ok := tok.(json.Delim); ok && d == '}' {
			break
		}
		key, ok := tok.(string)
		if !ok {
			return fmt.Errorf("%w: object key is not a string", canon.ErrSyntax)
		}
		if _, dup := seen[key]; dup {
			return fmt.Errorf("%w: duplicate object key %q", canon.ErrSyntax, key)
		}
		seen[key] = struct{}{}
		var val bytes.Buffer
		if err := refValue(dec, &val, depth); err != nil {
			return err
		}
		members = append(members, refMember{key: key, val: val.Bytes()})
	}
	sort.Slice(members, func(i, j int) bool { return members[i].key < members[j].key })
	out.WriteByte('{')
	for i, m := range members {
		if i > 0 {
			out.WriteByte(',')
		}
		refString(out, m.key)
		out.WriteByte(':')
		out.Write(m.val)
	}
	out.WriteByte('}')
	return nil
}

func refArray(dec *json.Decoder, out *bytes.Buffer, depth int) error {
	out.WriteByte('[')
	for i := 0; ; i++ {
		tok, err := dec.Token()
		if err != nil {
			return refSyntaxErr(err)
		}
		if d, ok := tok.(json.Delim); ok && d == ']' {
			break
		}
		if i > 0 {
			out.WriteByte(',')
		}
		if err := refToken(dec, tok, out, depth); err != nil {
			return err
		}
	}
	out.WriteByte(']')
	return nil
}

func refNumber(lit string) (string, error) {
	if !strings.ContainsAny(lit, ".eE") {
		if n, err := strconv.ParseInt(lit, 10, 64); err == nil {
			return strconv.FormatInt(n, 10), nil
		}
	}
	f, err := strconv.ParseFloat(lit, 64)
	if err != nil || math.IsInf(f, 0) {
		return "", fmt.Errorf("%w: number %s is out of range", canon.ErrSyntax, lit)
	}
	if f == math.Trunc(f) && math.Abs(f) < (1<<53) {
		return strconv.FormatInt(int64(f), 10), nil
	}
	return strconv.FormatFloat(f, 'g', -1, 64), nil
}

func refString(out *bytes.Buffer, s string) {
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
			out.WriteByte("0123456789abcdef"[c>>4])
			out.WriteByte("0123456789abcdef"[c&0xf])
		}
	}
	out.WriteByte('"')
}

func refSyntaxErr(err error) error {
	if err == io.EOF {
		return fmt.Errorf("%w: unexpected end of document", canon.ErrSyntax)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("%w: %v (at byte %d)", canon.ErrSyntax, se, se.Offset)
	}
	return fmt.Errorf("%w: %v", canon.ErrSyntax, err)
}
