package canon

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"unicode/utf8"
)

// ReferenceCanonicalize is a canonicaliser that parses with encoding/json's
// tokenizer instead of Canonicalize's scanner (numbers and strings are
// written by the same functions): the fuzz target checks that the scanner
// accepts, refuses and writes exactly what it does. Exported to the tests
// of package canon_test only.
func ReferenceCanonicalize(data []byte) ([]byte, error) {
	if !utf8.Valid(data) {
		return nil, fmt.Errorf("%w: document is not valid UTF-8", ErrSyntax)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var out bytes.Buffer
	if err := refValue(dec, &out, 0); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing data after the top-level value", ErrSyntax)
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
		if depth >= MaxDepth {
			return fmt.Errorf("%w: nesting deeper than %d levels", ErrSyntax, MaxDepth)
		}
		switch v {
		case '{':
			return refObject(dec, out, depth+1)
		case '[':
			return refArray(dec, out, depth+1)
		default:
			return fmt.Errorf("%w: unexpected %q", ErrSyntax, rune(v))
		}
	case string:
		out.Write(appendString(nil, v))
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
			return fmt.Errorf("%w: object key is not a string", ErrSyntax)
		}
		if _, dup := seen[key]; dup {
			return fmt.Errorf("%w: duplicate object key %q", ErrSyntax, key)
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
		out.Write(appendString(nil, m.key))
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

func refSyntaxErr(err error) error {
	if err == io.EOF {
		return fmt.Errorf("%w: unexpected end of document", ErrSyntax)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("%w: %v (at byte %d)", ErrSyntax, se, se.Offset)
	}
	return fmt.Errorf("%w: %v", ErrSyntax, err)
}
