package main

/*
#include <stdint.h>
#include <stdlib.h>
*/
import "C"

import (
	"encoding/json"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/infer"
	"github.com/esper-morph/esper/policy/graphpolicy"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// The graph policy's exports: translation only, see policy/graphpolicy.

//export esper_graph_features
func esper_graph_features(out **C.char) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out_json")
		}
		return setJSON(out, map[string]any{"node": graphpolicy.NodeFeatureNames(), "global": graphpolicy.GlobalFeatureNames(),
			"kind": graphpolicy.Kind, "schema": graphpolicy.Schema, "ops": tamiyo.MoveOps(), "sizes": tamiyo.SizeScales(),
			"train_command": graphpolicy.TrainCommand})
	})
}

//export esper_graph_forward
func esper_graph_forward(modelDir, runtime, graphJSON *C.char, out **C.char) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out_json")
		}
		dir, err := goString(modelDir, "model_dir")
		if err != nil {
			return err
		}
		doc, err := goString(graphJSON, "graph_json")
		if err != nil {
			return err
		}
		var g graphpolicy.Graph
		if err := json.Unmarshal([]byte(doc), &g); err != nil {
			return errcode.Errorf(errcode.Invalid, "graph forward: graph_json: %v", err)
		}
		m, err := graphpolicy.Load(dir)
		if err != nil {
			return err
		}
		dense, action, err := m.Forward(&g)
		if err != nil {
			return err
		}
		rt := ""
		if runtime != nil {
			rt = C.GoString(runtime)
		}
		switch rt {
		case "", infer.Native:
		case infer.ONNX:
			if dense, err = m.ForwardONNX(&g, ""); err != nil {
				return err
			}
		default:
			return errcode.Errorf(errcode.Invalid, "graph forward: runtime %q is not %q or %q", rt, infer.Native, infer.ONNX)
		}
		return setJSON(out, map[string]any{"dense": dense, "action": action})
	})
}
