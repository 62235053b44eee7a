package blueprint

import "fmt"

// Conv pairs are widened, never given a branch of another shape: a seed on a
// pair host adds Width output channels to the producer (a conv with the
// producer's geometry and a bias, default init), passes them through the
// pair's activation, and feeds them to the consumer through Width new input
// channels (a conv with the consumer's geometry, no bias, zero init). Since
// convolution is linear in its input channels and the activation acts on
// each channel alone, host(x) + alpha*seed(x) is the pair with its channels
// concatenated and the consumer's new input weights scaled by alpha: the
// seed is exact at germination (its output is 0) and merges into two plain
// convs at export.

// Op ids of a widening seed.
const (
	widenProducer = "producer"
	widenAct      = "act"
	widenConsumer = "consumer"
)

func buildWiden(p Params, h Host) ([]Op, string) {
	nd := h.spatialDims()
	w := width(p, "width")
	ops := []Op{convOp(nd, widenProducer, InputName, h.In, w, h.Kernel, h.Stride, h.Padding, 1, false)}
	last := widenProducer
	if h.Activation != ActIdentity {
		ops = append(ops, Op{ID: widenAct, Op: h.Activation, Inputs: []string{last}})
		last = widenAct
	}
	feed := convOp(nd, widenConsumer, last, w, h.Out, h.ConsumerKernel, h.ConsumerStride, h.ConsumerPadding, 1, true)
	feed.Attrs["bias"] = false
	return append(ops, feed), widenConsumer
}

// checkWidening checks that ir, valid on the pair host h, is a widening of
// it (see above): the only seeds a pair host takes, so every seed there
// merges at export.
func checkWidening(ir *IR, h Host, byID map[string]*Op) error {
	convName := OpConv2d
	if h.spatialDims() == 1 {
		convName = OpConv1d
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: a %s host takes only widening seeds (template widen: %s, %s, %s): %s",
			ErrNotWidening, h.Kind, describeConv(convName, h.Kernel, h.Stride, h.Padding, true, InitDefault),
			h.Activation, describeConv(convName, h.ConsumerKernel, h.ConsumerStride, h.ConsumerPadding, false, InitZero),
			fmt.Sprintf(format, args...))
	}
	want := 2
	if h.Activation != ActIdentity {
		want = 3
	}
	if len(ir.Ops) != want {
		return bad("%d ops, want %d", len(ir.Ops), want)
	}
	// Walk back from the output: consumer <- [activation <-] producer <- x.
	consumer := byID[ir.Output]
	if err := matchConv(consumer, convName, h.ConsumerKernel, h.ConsumerStride, h.ConsumerPadding, false, InitZero); err != "" {
		return bad("the output op %q %s", consumer.ID, err)
	}
	prev := byID[consumer.Inputs[0]]
	if prev == nil {
		return bad("the consumer op %q reads the seed's input, not the producer's channels", consumer.ID)
	}
	if h.Activation != ActIdentity {
		if prev.Op != h.Activation {
			return bad("op %q is %s, the pair's activation is %s", prev.ID, prev.Op, h.Activation)
		}
		prev = byID[prev.Inputs[0]]
		if prev == nil {
			return bad("the activation reads the seed's input, not the producer's channels")
		}
	}
	if err := matchConv(prev, convName, h.Kernel, h.Stride, h.Padding, true, InitDefault); err != "" {
		return bad("the producer op %q %s", prev.ID, err)
	}
	if prev.Inputs[0] != InputName {
		return bad("the producer op %q reads %q, not the seed's input %q", prev.ID, prev.Inputs[0], InputName)
	}
	return nil
}

// matchConv returns "" when op is the conv described, else what differs.
func matchConv(op *Op, name string, k, s, p int64, bias bool, init string) string {
	if op.Op != name {
		return fmt.Sprintf("is %s, want %s", op.Op, name)
	}
	a := attrs(op.Attrs)
	got := describeConv(name, a.int("kernel"), a.int("stride"), a.int("padding"), a.bool("bias"), a.str("init"))
	if a.int("kernel") != k || a.int("stride") != s || a.int("padding") != p || a.bool("bias") != bias ||
		a.str("init") != init || a.int("groups") != 1 {
		return fmt.Sprintf("is %s with groups %d, want %s with groups 1", got, a.int("groups"), describeConv(name, k, s, p, bias, init))
	}
	return ""
}

func describeConv(name string, k, s, p int64, bias bool, init string) string {
	return fmt.Sprintf("%s kernel %d stride %d padding %d bias %t init %s", name, k, s, p, bias, init)
}
