// Package canon turns JSON documents into their canonical bytes and names
// them by SHA-256. Karn's blueprint ids and Urza's artifact ids are both the
// lowercase hex SHA-256 of canonical bytes produced here, so the two never
// disagree on what "canonical" means.
//
// The canonical form of a JSON value is:
//
//   - objects with their keys sorted by their UTF-8 bytes, no duplicate keys;
//   - no insignificant whitespace;
//   - strings escaped minimally: '"' and '\' are escaped, control characters
//     below U+0020 use \b \f \n \r \t or \u00XX, everything else is written
//     as UTF-8 (no HTML escaping, no \u escapes for printable characters);
//   - numbers in shortest form: an integer literal that fits in an int64, or a
//     number whose value is an integer of magnitude below 2^53, is written as
//     a plain decimal integer ("1.0" and "1e0" become "1", "-0" becomes "0");
//     any other number is the shortest decimal that round-trips through a
//     float64 (strconv 'g' format, e.g. "0.5", "1e+21").
//
// Canonicalisation is idempotent. Input must be valid UTF-8, hold exactly one
// JSON value, nest at most MaxDepth levels and contain no duplicate object
// keys; anything else is refused with an error wrapping ErrSyntax.
// DecodeStrict applies the same checks before decoding into a Go value, and
// also refuses unknown fields: every parser of Esper's JSON documents
// (IR, host, manifest, query, cache metadata) goes through it.
//
// Everything here is a pure function and safe for concurrent use.
package canon
