package session

import (
	"fmt"

	"github.com/esper-morph/esper/blueprint"
)

// DefaultConfig returns the settings a session uses when its configuration
// leaves them out: the configuration WithDefaults fills in, without layers or
// metrics labels. It is the one source of the defaults; the Python package
// reads them from here (esper_session_defaults) instead of keeping copies.
// In JSON, settings whose default is the zero value (max_params, seed,
// prune_below, epochs, ...) are left out, as in any configuration.
func DefaultConfig() (Config, error) {
	probe := Config{Layers: []LayerConfig{{Name: "probe", Host: blueprint.Host{Kind: blueprint.HostLinear, In: 1, Out: 1}}}}
	c, err := probe.WithDefaults()
	if err != nil {
		return Config{}, fmt.Errorf("session: defaults: %w", err)
	}
	c.Layers = nil
	c.Metrics = MetricsConfig{}
	return c, nil
}
