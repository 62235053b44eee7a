package blueprint

import (
	"slices"
	"strconv"
	"sync"

	"github.com/esper-morph/esper/blueprint/canon"
)

// MaxInstances bounds the instances an Instances keeps; later ones are
// built each time they are asked for.
const MaxInstances = 256

// Instances memoizes Template.Instantiate for one owner (a session's
// controller; never a global): the IR of a template with given parameters
// for a given host is built, analysed and counted once, and its canonical
// document and id computed once, however many seeds germinate with it.
// An instance is keyed by everything that determines it: the template's
// name, the parameters as given and the host. The zero value is ready to
// use; it is safe for concurrent use.
type Instances struct {
	// mu guards byKey and byIR, and the instances' doc and id.
	mu sync.Mutex
	// byKey holds the instances by template, parameters and host; byIR
	// finds one from the IR it handed out.
	byKey map[string]*instance
	byIR  map[*IR]*instance
}

type instance struct {
	ir *IR
	// doc and id are the canonical document and id, once Canonical has
	// computed them (doc nil before).
	doc []byte
	id  string
}

// Instantiate returns t.Instantiate(params, host), from the memo when the
// same template, parameters and host were instantiated before. The IR is
// shared by every caller that asks for the same instance: it must not be
// modified (Clone it to change it). Errors are not kept; parameters of a
// kind other than int, int64, string and bool, and hosts that do not
// encode, are instantiated each time.
func (m *Instances) Instantiate(t Template, params Params, host Host) (*IR, error) {
	key, ok := instanceKey(t.Name, params, &host)
	if !ok {
		return t.Instantiate(params, host)
	}
	m.mu.Lock()
	in := m.byKey[string(key)]
	m.mu.Unlock()
	if in != nil {
		return in.ir, nil
	}
	ir, err := t.Instantiate(params, host)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if in := m.byKey[string(key)]; in != nil { // made meanwhile by another caller
		return in.ir, nil
	}
	if len(m.byKey) < MaxInstances {
		if m.byKey == nil {
			m.byKey, m.byIR = map[string]*instance{}, map[*IR]*instance{}
		}
		in := &instance{ir: ir}
		m.byKey[string(key)], m.byIR[ir] = in, in
	}
	return ir, nil
}

// Canonical returns the canonical document (IR.CanonicalComplete: the IR
// was analysed when it was instantiated) and the id (canon.ID) of ir,
// computed at the first call for its instance, when ir is an IR that
// Instantiate returned and kept; ok is false for any other IR, whatever
// its content. The document is the caller's copy.
func (m *Instances) Canonical(ir *IR) (doc []byte, id string, ok bool, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	in := m.byIR[ir]
	if in == nil {
		return nil, "", false, nil
	}
	if in.doc == nil {
		d, err := ir.CanonicalComplete()
		if err != nil {
			return nil, "", true, err
		}
		in.doc, in.id = d, canon.ID(d)
	}
	return slices.Clone(in.doc), in.id, true, nil
}

// Len returns the number of instances kept.
func (m *Instances) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.byKey)
}

// instanceKey encodes what determines an instance: the template's name,
// the parameters (sorted by name, each value tagged with its kind) and
// the host's canonical JSON. ok is false for a parameter value of another
// kind or a host that does not encode.
func instanceKey(name string, params Params, host *Host) ([]byte, bool) {
	key := make([]byte, 0, 128)
	key = append(strconv.AppendInt(key, int64(len(name)), 10), ':')
	key = append(key, name...)
	names := make([]string, 0, len(params))
	for k := range params {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		key = append(strconv.AppendInt(append(key, '|'), int64(len(k)), 10), ':')
		key = append(key, k...)
		switch v := params[k].(type) {
		case int:
			key = strconv.AppendInt(append(key, 'i'), int64(v), 10)
		case int64:
			key = strconv.AppendInt(append(key, 'i'), v, 10)
		case string:
			key = append(strconv.AppendInt(append(key, 's'), int64(len(v)), 10), ':')
			key = append(key, v...)
		case bool:
			key = strconv.AppendBool(append(key, 'b'), v)
		default:
			return nil, false
		}
	}
	return host.appendCanonical(append(key, '#'))
}
