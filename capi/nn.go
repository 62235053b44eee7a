package main

/*
#include <stdint.h>
#include <stdlib.h>
*/
import "C"

import (
	"fmt"
	"path/filepath"

	"github.com/esper-morph/esper/blueprint/canon"
	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/infer"
	"github.com/esper-morph/esper/core/onnxrt"
)

// The exports of core/infer: a model folder (docs/simic.md) run on the
// native or the ONNX runtime. Translation only.

// onnxruntimeLibName is the file `make onnxruntime` places beside libesper.so.
const onnxruntimeLibName = "libonnxruntime.so.1"

// defaultOnnxruntimeLib is libonnxruntime.so.1 in the folder of libesper.so
// (the bare name when the loader does not say where libesper.so is).
func defaultOnnxruntimeLib() string {
	if self := selfPath(); self != "" {
		return filepath.Join(filepath.Dir(self), onnxruntimeLibName)
	}
	return onnxruntimeLibName
}

// setOnnxruntimeLib records the library the ONNX runtime loads: path, or
// the default beside libesper.so when path is "" and none was set yet.
func setOnnxruntimeLib(path string) {
	if path != "" {
		onnxrt.SetDefaultLibrary(path)
	} else if onnxrt.DefaultLibrary() == "" {
		onnxrt.SetDefaultLibrary(defaultOnnxruntimeLib())
	}
}

// nnConfig is esper_nn_open's argument.
type nnConfig struct {
	Dir     string `json:"dir"`
	Runtime string `json:"runtime"`
	Threads int    `json:"threads"`
}

//export esper_nn_open
func esper_nn_open(configJSON *C.char, out *C.uint64_t) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out")
		}
		s, err := goString(configJSON, "config_json")
		if err != nil {
			return err
		}
		var cfg nnConfig
		if err := canon.DecodeStrict([]byte(s), &cfg); err != nil {
			return fmt.Errorf("nn open: config: %v: %w", err, errcode.ErrInvalid)
		}
		if cfg.Dir == "" {
			return fmt.Errorf("nn open: config has no dir: %w", errcode.ErrInvalid)
		}
		if cfg.Threads < 0 || cfg.Threads > 64 {
			return fmt.Errorf("nn open: threads %d is not in [0, 64]: %w", cfg.Threads, errcode.ErrInvalid)
		}
		setOnnxruntimeLib("") // a caller that skipped esper_init gets the default
		m, err := infer.OpenDir(cfg.Dir, infer.Options{Runtime: cfg.Runtime, Threads: cfg.Threads})
		if err != nil {
			return fmt.Errorf("nn open: %w", err)
		}
		*out = C.uint64_t(handles.add(m))
		return nil
	})
}

//export esper_nn_info
func esper_nn_info(h C.uint64_t, out **C.char) C.int {
	return call(uint64(h), func() error {
		if out == nil {
			return errNull("out_json")
		}
		m, err := lookup[infer.Model](uint64(h))
		if err != nil {
			return err
		}
		info := map[string]any{"runtime": m.Runtime(), "in": m.In(), "out": m.Out(), "onnxruntime": nil}
		if rt := onnxrt.Loaded(); rt != nil && m.Runtime() == infer.ONNX {
			info["onnxruntime"] = map[string]string{"path": rt.Path(), "version": rt.Version()}
		}
		return setJSON(out, info)
	})
}

//export esper_nn_forward
func esper_nn_forward(h C.uint64_t, x *C.float, rows C.size_t, out *C.float, outLen C.size_t) C.int {
	return call(uint64(h), func() error {
		m, err := lookup[infer.Model](uint64(h))
		if err != nil {
			return err
		}
		if rows == 0 || uint64(rows) > 1<<24 {
			return fmt.Errorf("nn forward: rows %d is not in [1, 2^24]: %w", uint64(rows), errcode.ErrInvalid)
		}
		n := int(rows)
		if x == nil {
			return errNull("x")
		}
		if out == nil {
			return errNull("out")
		}
		if uint64(outLen) != uint64(n*m.Out()) {
			return fmt.Errorf("nn forward: out holds %d floats, %d rows of %d outputs need %d: %w", uint64(outLen), n, m.Out(), n*m.Out(), errcode.ErrInvalid)
		}
		y, err := m.Forward(float32s(x, C.size_t(n*m.In())), n)
		if err != nil {
			return fmt.Errorf("nn forward: %w", err)
		}
		copy(float32s(out, outLen), y)
		return nil
	})
}

//export esper_nn_free
func esper_nn_free(h C.uint64_t) C.int {
	return call(0, func() error {
		if err := free[infer.Model](uint64(h), infer.Model.Close); err != nil {
			return fmt.Errorf("nn free: %w", err)
		}
		lastErrors.drop(uint64(h))
		return nil
	})
}
