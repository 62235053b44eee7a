package main

/*
#include <stdint.h>
#include <stdlib.h>
*/
import "C"

import (
	"fmt"

	"github.com/esper-morph/esper/core/cache"
)

// Kernel cache exports: translation only, see core/cache.

//export esper_cache_new
func esper_cache_new(maxBytes C.int64_t, out *C.uint64_t) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out")
		}
		c, err := cache.New(int64(maxBytes))
		if err != nil {
			return err
		}
		*out = C.uint64_t(handles.add(c))
		return nil
	})
}

//export esper_cache_free
func esper_cache_free(h C.uint64_t) C.int {
	return call(0, func() error {
		if err := free[*cache.Cache](uint64(h), nil); err != nil {
			return fmt.Errorf("cache free: %w", err)
		}
		lastErrors.drop(uint64(h))
		return nil
	})
}

//export esper_cache_put
func esper_cache_put(h C.uint64_t, metaJSON *C.char, data *C.uint8_t, n C.size_t, outEvicted **C.char) C.int {
	return call(uint64(h), func() error {
		if outEvicted == nil {
			return errNull("out_evicted_json")
		}
		c, err := lookup[*cache.Cache](uint64(h))
		if err != nil {
			return err
		}
		doc, err := goString(metaJSON, "meta_json")
		if err != nil {
			return err
		}
		m, err := cache.ParseMeta([]byte(doc))
		if err != nil {
			return err
		}
		var kept []byte
		if n > 0 {
			view, err := viewBytes(data, n, "data")
			if err != nil {
				return err
			}
			kept = append([]byte(nil), view...) // the cache keeps its own copy
		}
		evicted, err := c.Put(m, kept)
		if err != nil {
			return err
		}
		if evicted == nil {
			evicted = []string{}
		}
		return setJSON(outEvicted, evicted)
	})
}

//export esper_cache_get
func esper_cache_get(h C.uint64_t, id, wantJSON *C.char, outMeta **C.char, outData **C.uint8_t, outN *C.size_t) C.int {
	return call(uint64(h), func() error {
		switch {
		case outMeta == nil:
			return errNull("out_meta_json")
		case outData == nil:
			return errNull("out_data")
		case outN == nil:
			return errNull("out_n")
		}
		c, err := lookup[*cache.Cache](uint64(h))
		if err != nil {
			return err
		}
		key, err := goString(id, "id")
		if err != nil {
			return err
		}
		w, err := cache.ParseWant([]byte(optString(wantJSON)))
		if err != nil {
			return err
		}
		e, err := c.Get(key, w)
		if err != nil {
			return err
		}
		if err := setJSON(outMeta, e.Meta); err != nil {
			return err
		}
		setBytes(outData, outN, e.Data)
		return nil
	})
}

//export esper_cache_remove
func esper_cache_remove(h C.uint64_t, id *C.char, outRemoved *C.int32_t) C.int {
	return call(uint64(h), func() error {
		if outRemoved == nil {
			return errNull("out_removed")
		}
		c, err := lookup[*cache.Cache](uint64(h))
		if err != nil {
			return err
		}
		key, err := goString(id, "id")
		if err != nil {
			return err
		}
		*outRemoved = 0
		if c.Remove(key) {
			*outRemoved = 1
		}
		return nil
	})
}

//export esper_cache_stats
func esper_cache_stats(h C.uint64_t, out **C.char) C.int {
	return call(uint64(h), func() error {
		if out == nil {
			return errNull("out_json")
		}
		c, err := lookup[*cache.Cache](uint64(h))
		if err != nil {
			return err
		}
		return setJSON(out, c.Stats())
	})
}
