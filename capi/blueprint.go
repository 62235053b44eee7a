package main

/*
#include <stdint.h>
#include <stdlib.h>
*/
import "C"

import (
	"fmt"
	"math/rand/v2"

	"github.com/esper-morph/esper/blueprint"
)

// Karn's exports: translation only, see blueprint/.

//export esper_blueprint_templates
func esper_blueprint_templates(out **C.char) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out_json")
		}
		return setJSON(out, blueprint.Templates())
	})
}

//export esper_blueprint_instantiate
func esper_blueprint_instantiate(template, paramsJSON, hostJSON *C.char, out **C.char) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out_ir_json")
		}
		name, err := goString(template, "template_name")
		if err != nil {
			return err
		}
		host, err := goString(hostJSON, "host_json")
		if err != nil {
			return err
		}
		h, err := blueprint.ParseHost([]byte(host))
		if err != nil {
			return fmt.Errorf("blueprint instantiate: %w", err)
		}
		p, err := blueprint.ParseParams([]byte(optString(paramsJSON)))
		if err != nil {
			return fmt.Errorf("blueprint instantiate: %w", err)
		}
		ir, err := blueprint.Instantiate(name, p, h)
		if err != nil {
			return fmt.Errorf("blueprint instantiate: %w", err)
		}
		c, err := ir.Canonical()
		if err != nil {
			return fmt.Errorf("blueprint instantiate: %w", err)
		}
		setString(out, string(c))
		return nil
	})
}

//export esper_blueprint_canonical
func esper_blueprint_canonical(irJSON *C.char, outCanonical, outID **C.char) C.int {
	return call(0, func() error {
		if outCanonical == nil {
			return errNull("out_canonical")
		}
		if outID == nil {
			return errNull("out_id")
		}
		doc, err := goString(irJSON, "ir_json")
		if err != nil {
			return err
		}
		ir, err := blueprint.Parse([]byte(doc))
		if err != nil {
			return fmt.Errorf("blueprint canonical: %w", err)
		}
		c, err := ir.Canonical()
		if err != nil {
			return fmt.Errorf("blueprint canonical: %w", err)
		}
		id, err := ir.ID()
		if err != nil {
			return fmt.Errorf("blueprint canonical: %w", err)
		}
		setString(outCanonical, string(c))
		setString(outID, id)
		return nil
	})
}

//export esper_blueprint_check
func esper_blueprint_check(irJSON, hostJSON, budgetJSON *C.char) C.int {
	return call(0, func() error {
		doc, err := goString(irJSON, "ir_json")
		if err != nil {
			return err
		}
		ir, err := blueprint.Parse([]byte(doc))
		if err != nil {
			return fmt.Errorf("blueprint check: %w", err)
		}
		host := ir.Host
		if hostJSON != nil {
			if host, err = blueprint.ParseHost([]byte(C.GoString(hostJSON))); err != nil {
				return fmt.Errorf("blueprint check: %w", err)
			}
		}
		b, err := blueprint.ParseBudget([]byte(optString(budgetJSON)))
		if err != nil {
			return fmt.Errorf("blueprint check: %w", err)
		}
		if err := blueprint.Check(ir, host, b); err != nil {
			return fmt.Errorf("blueprint check: %w", err)
		}
		return nil
	})
}

//export esper_blueprint_analyze
func esper_blueprint_analyze(irJSON, hostJSON *C.char, out **C.char) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out_json")
		}
		doc, err := goString(irJSON, "ir_json")
		if err != nil {
			return err
		}
		ir, err := blueprint.Parse([]byte(doc))
		if err != nil {
			return fmt.Errorf("blueprint analyze: %w", err)
		}
		host := ir.Host
		if hostJSON != nil {
			if host, err = blueprint.ParseHost([]byte(C.GoString(hostJSON))); err != nil {
				return fmt.Errorf("blueprint analyze: %w", err)
			}
		}
		a, err := blueprint.Analyze(ir, host)
		if err != nil {
			return fmt.Errorf("blueprint analyze: %w", err)
		}
		return setJSON(out, a)
	})
}

//export esper_blueprint_mutate
func esper_blueprint_mutate(irJSON, budgetJSON *C.char, seed C.uint64_t, out **C.char) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out_ir_json")
		}
		doc, err := goString(irJSON, "ir_json")
		if err != nil {
			return err
		}
		ir, err := blueprint.Parse([]byte(doc))
		if err != nil {
			return fmt.Errorf("blueprint mutate: %w", err)
		}
		b, err := blueprint.ParseBudget([]byte(optString(budgetJSON)))
		if err != nil {
			return fmt.Errorf("blueprint mutate: %w", err)
		}
		s := uint64(seed)
		next, err := blueprint.Mutate(ir, b, rand.New(rand.NewPCG(s, s^0x9e3779b97f4a7c15)))
		if err != nil {
			return fmt.Errorf("blueprint mutate: %w", err)
		}
		c, err := next.Canonical()
		if err != nil {
			return fmt.Errorf("blueprint mutate: %w", err)
		}
		setString(out, string(c))
		return nil
	})
}
