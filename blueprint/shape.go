package blueprint

import (
	"fmt"
	"strconv"
	"strings"
)

// Symbolic dimension names.
const (
	// SymBatch is the batch dimension of channel-first shapes.
	SymBatch = "N"
)

// Dim is one dimension of a Shape: a known extent (Sym empty, Size > 0) or
// floor((Sym + Off) / Div) of a symbolic extent Sym ("N", "L", "H" or "W")
// with Div >= 1. The form is canonical: two Dims are the same function of
// their symbol exactly when they are equal as values.
type Dim struct {
	Size int64  `json:"size,omitempty"`
	Sym  string `json:"sym,omitempty"`
	Off  int64  `json:"off,omitempty"`
	Div  int64  `json:"div,omitempty"`
}

// Known returns a dimension of known extent n.
func Known(n int64) Dim { return Dim{Size: n} }

// Symbol returns the identity dimension of symbol s.
func Symbol(s string) Dim { return Dim{Sym: s, Div: 1} }

// IsKnown reports whether the extent is a constant.
func (d Dim) IsKnown() bool { return d.Sym == "" }

// String renders the dimension: "64", "H", "H-1", "floor((H+1)/2)".
func (d Dim) String() string {
	if d.IsKnown() {
		return strconv.FormatInt(d.Size, 10)
	}
	base := d.Sym
	if d.Off > 0 {
		base += "+" + strconv.FormatInt(d.Off, 10)
	} else if d.Off < 0 {
		base += strconv.FormatInt(d.Off, 10)
	}
	if d.Div == 1 {
		return base
	}
	return "floor((" + base + ")/" + strconv.FormatInt(d.Div, 10) + ")"
}

// conv returns the extent after a convolution with kernel k, stride s and
// padding p: floor((d + 2p - k) / s) + 1. A known extent that collapses below
// 1 is an error.
func (d Dim) conv(k, s, p int64) (Dim, error) {
	if d.IsKnown() {
		n := d.Size + 2*p - k
		if n < 0 {
			return Dim{}, fmt.Errorf("extent %d is smaller than kernel %d with padding %d", d.Size, k, p)
		}
		return Known(n/s + 1), nil
	}
	// floor((floor((X+Off)/Div) + 2p - k + s) / s) = floor((X + Off + Div*(2p-k+s)) / (Div*s)).
	return Dim{Sym: d.Sym, Off: d.Off + d.Div*(2*p-k+s), Div: d.Div * s}, nil
}

// eval returns the extent for the given symbol values.
func (d Dim) eval(ext map[string]int64) int64 {
	if d.IsKnown() {
		return d.Size
	}
	return floorDiv(ext[d.Sym]+d.Off, d.Div)
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

// Shape is a symbolic tensor shape. Leading means "any number of leading
// dimensions" before Dims, as in (*, C) for a linear layer's input.
type Shape struct {
	Leading bool  `json:"leading,omitempty"`
	Dims    []Dim `json:"dims"`
}

// String renders the shape, e.g. "(*, 64)" or "(N, 16, H, W)".
func (s Shape) String() string {
	parts := make([]string, 0, len(s.Dims)+1)
	if s.Leading {
		parts = append(parts, "*")
	}
	for _, d := range s.Dims {
		parts = append(parts, d.String())
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

// Equal reports whether two shapes agree for every input size.
func (s Shape) Equal(o Shape) bool {
	if s.Leading != o.Leading || len(s.Dims) != len(o.Dims) {
		return false
	}
	for i := range s.Dims {
		if s.Dims[i] != o.Dims[i] {
			return false
		}
	}
	return true
}

// last returns the last dimension; the shape must have one.
func (s Shape) last() Dim { return s.Dims[len(s.Dims)-1] }

// with returns a copy of s with dimension i replaced by d.
func (s Shape) with(i int, d Dim) Shape {
	dims := append([]Dim(nil), s.Dims...)
	dims[i] = d
	return Shape{Leading: s.Leading, Dims: dims}
}

// elements returns the number of elements per sample: leading dims and the
// batch count as one, symbolic extents are evaluated at ext.
func (s Shape) elements(ext map[string]int64) int64 {
	n := int64(1)
	for _, d := range s.Dims {
		if d.Sym == SymBatch {
			continue
		}
		n = satMul(n, d.eval(ext))
	}
	return n
}

// channelFirst reports whether s is (N, C, spatial...) with the given
// number of spatial dims.
func (s Shape) channelFirst(spatial int) bool {
	return !s.Leading && len(s.Dims) == spatial+2 && s.Dims[0] == Symbol(SymBatch)
}

// broadcast returns the shape of an elementwise op on a and b: the shapes
// must have the same rank and leading flag, and each pair of dims must be
// equal or one of them the constant 1.
func broadcast(a, b Shape) (Shape, error) {
	if a.Leading != b.Leading || len(a.Dims) != len(b.Dims) {
		return Shape{}, fmt.Errorf("cannot broadcast %v with %v", a, b)
	}
	out := Shape{Leading: a.Leading, Dims: make([]Dim, len(a.Dims))}
	for i := range a.Dims {
		da, db := a.Dims[i], b.Dims[i]
		switch {
		case da == db:
			out.Dims[i] = da
		case da == Known(1):
			out.Dims[i] = db
		case db == Known(1):
			out.Dims[i] = da
		default:
			return Shape{}, fmt.Errorf("cannot broadcast %v with %v (dim %d: %v vs %v)", a, b, i, da, db)
		}
	}
	return out, nil
}

// maxCount caps parameter and FLOP counts; products saturate here instead
// of overflowing.
const maxCount = int64(1) << 62

func satMul(a, b int64) int64 {
	if a == 0 || b == 0 {
		return 0
	}
	if a > maxCount/b {
		return maxCount
	}
	return a * b
}

func satAdd(a, b int64) int64 {
	if a > maxCount-b {
		return maxCount
	}
	return a + b
}
