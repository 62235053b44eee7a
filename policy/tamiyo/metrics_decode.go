package tamiyo

import (
	"strconv"

	"github.com/esper-morph/esper/core/nissa"
)

// decodeMetricsPlain decodes the metrics documents trainers send at every
// end of epoch (the fields by their exact names, numbers and nulls, no
// string values or escapes) without reflection or a second pass, into what
// canon.DecodeStrict gives for them. ok is false for anything else:
// unknown, repeated or differently spelled fields, strings ("NaN"),
// numbers out of range, trailing data; ParseMetrics then decodes the
// document with canon.DecodeStrict, which accepts or refuses it with its
// reason. It checks nothing that ParseMetrics checks after decoding.
func decodeMetricsPlain(data []byte) (m Metrics, ok bool) {
	d := plainDoc{b: data}
	var seen [6]bool
	if !d.members(func(key []byte) bool {
		field := -1
		for i, name := range metricFields {
			if string(key) == name {
				field = i
			}
		}
		if field < 0 || seen[field] {
			return false
		}
		seen[field] = true
		switch field {
		case 0:
			if d.null() {
				m.Epoch = nil
				return true
			}
			n, ok := d.int()
			if !ok || n != int64(int(n)) {
				return false
			}
			e := int(n)
			m.Epoch = &e
			return true
		case 1:
			return d.metric(&m.TrainLoss)
		case 2:
			return d.metric(&m.ValLoss)
		case 3:
			return d.metric(&m.ValMetric)
		case 4:
			if d.null() {
				m.Contributions = nil
				return true
			}
			m.Contributions = []Contribution{}
			return d.elements(func() bool {
				var c Contribution
				var got [3]bool
				if !d.members(func(key []byte) bool {
					var ok bool
					switch k := string(key); {
					case k == "layer" && !got[0]:
						got[0] = true
						c.Layer, ok = d.intField()
					case k == "slot" && !got[1]:
						got[1] = true
						c.Slot, ok = d.intField()
					case k == "delta_loss" && !got[2]:
						got[2] = true
						c.DeltaLoss, ok = d.float()
					}
					return ok
				}) {
					return false
				}
				m.Contributions = append(m.Contributions, c)
				return true
			})
		default:
			if d.null() {
				m.SamplesPerStep = nil
				return true
			}
			m.SamplesPerStep = []int64{}
			return d.elements(func() bool {
				n, ok := d.int()
				m.SamplesPerStep = append(m.SamplesPerStep, n)
				return ok
			})
		}
	}) {
		return Metrics{}, false
	}
	d.space()
	if d.i != len(d.b) {
		return Metrics{}, false
	}
	return m, true
}

// metricFields are Metrics' JSON names, in decodeMetricsPlain's order.
var metricFields = [6]string{"epoch", "train_loss", "val_loss", "val_metric", "contributions", "samples_per_step"}

// plainDoc reads a JSON document made of objects, arrays, numbers and
// null, with plain keys (no escapes).
type plainDoc struct {
	b []byte
	i int
}

func (d *plainDoc) space() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// eat skips space and then c, reporting whether c was there.
func (d *plainDoc) eat(c byte) bool {
	d.space()
	if d.i < len(d.b) && d.b[d.i] == c {
		d.i++
		return true
	}
	return false
}

// members reads an object, calling member with each key once the reader
// stands before its value; member reads the value.
func (d *plainDoc) members(member func(key []byte) bool) bool {
	if !d.eat('{') {
		return false
	}
	if d.eat('}') {
		return true
	}
	for {
		if !d.eat('"') {
			return false
		}
		start := d.i
		for d.i < len(d.b) && d.b[d.i] != '"' {
			if c := d.b[d.i]; c == '\\' || c < 0x20 || c >= 0x80 {
				return false
			}
			d.i++
		}
		if d.i == len(d.b) {
			return false
		}
		key := d.b[start:d.i]
		d.i++
		if !d.eat(':') || !member(key) {
			return false
		}
		if d.eat('}') {
			return true
		}
		if !d.eat(',') {
			return false
		}
	}
}

// elements reads an array, calling element before each element's value.
func (d *plainDoc) elements(element func() bool) bool {
	if !d.eat('[') {
		return false
	}
	if d.eat(']') {
		return true
	}
	for {
		if !element() {
			return false
		}
		if d.eat(']') {
			return true
		}
		if !d.eat(',') {
			return false
		}
	}
}

func (d *plainDoc) null() bool {
	d.space()
	if len(d.b)-d.i >= 4 && string(d.b[d.i:d.i+4]) == "null" {
		d.i += 4
		return true
	}
	return false
}

// number returns the next JSON number literal (JSON's grammar) and
// whether it is an integer literal.
func (d *plainDoc) number() (lit []byte, integer bool) {
	d.space()
	start, b := d.i, d.b
	i := d.i
	digits := func() int {
		n := 0
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
			n++
		}
		return n
	}
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case digits() == 0:
		return nil, false
	}
	integer = true
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			return nil, false
		}
		integer = false
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			return nil, false
		}
		integer = false
	}
	d.i = i
	return b[start:i], integer
}

// int reads an integer literal that fits an int64.
func (d *plainDoc) int() (int64, bool) {
	lit, integer := d.number()
	if lit == nil || !integer {
		return 0, false
	}
	n, err := strconv.ParseInt(string(lit), 10, 64)
	return n, err == nil
}

// intField reads an integer literal that fits an int.
func (d *plainDoc) intField() (int, bool) {
	n, ok := d.int()
	return int(n), ok && n == int64(int(n))
}

// float reads a number literal as a float64 (false when out of range).
func (d *plainDoc) float() (float64, bool) {
	lit, _ := d.number()
	if lit == nil {
		return 0, false
	}
	f, err := strconv.ParseFloat(string(lit), 64)
	return f, err == nil
}

// metric reads a metric: null (not measured) or a number.
func (d *plainDoc) metric(m *nissa.Metric) bool {
	if d.null() {
		*m = nissa.Metric{}
		return true
	}
	f, ok := d.float()
	if ok {
		*m = nissa.Measure(f)
	}
	return ok
}
