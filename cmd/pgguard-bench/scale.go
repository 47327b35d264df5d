package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Names of the scale cases, for -scale.
const (
	scaleCaseSources  = "sources"
	scaleCasePurge    = "purge"
	scaleCaseSpraying = "spraying"
)

var allScaleCases = []string{scaleCaseSources, scaleCasePurge, scaleCaseSpraying}

func parseScaleCases(list string) (map[string]bool, error) {
	cases := map[string]bool{}
	if list == "" {
		return cases, nil
	}
	for name := range strings.SplitSeq(list, ",") {
		name = strings.TrimSpace(name)
		if !slices.Contains(allScaleCases, name) {
			return nil, fmt.Errorf("-scale: unknown case %q; use some of %s", name, strings.Join(allScaleCases, ", "))
		}
		cases[name] = true
	}
	return cases, nil
}

// scaleOptions select and size the scale cases.
type scaleOptions struct {
	cases map[string]bool
	// sources is how many sources failed against one email.
	sources int
	// records and expired size the idempotency table the purge runs on.
	records int
	expired int
	// accounts is how many accounts the spraying case tries.
	accounts int
	// insertTime is how long the purge case inserts without a purge.
	insertTime time.Duration
	// purgeBatch is the batch size of the purge case.
	purgeBatch int
	// purgePause is the purge case's IdempotencyCleanerConfig.BatchPause:
	// 0 for the cleaner's default, negative for none.
	purgePause time.Duration
}

func (o scaleOptions) validate() error {
	switch {
	case o.sources < 1 || o.sources > maxKeysPerSet/2:
		return fmt.Errorf("-scale-sources is %d; use 1 to %d", o.sources, maxKeysPerSet/2)
	case o.records < 1:
		return fmt.Errorf("-scale-records is %d; use a positive number of records", o.records)
	case o.expired < 1 || o.expired > o.records:
		return fmt.Errorf("-scale-expired is %d; use 1 to -scale-records (%d)", o.expired, o.records)
	case o.accounts < sprayingWindows || o.accounts > maxKeysPerSet:
		return fmt.Errorf("-scale-accounts is %d; use %d to %d", o.accounts, sprayingWindows, maxKeysPerSet)
	case o.insertTime < 100*time.Millisecond:
		return fmt.Errorf("-scale-insert-time is %s; use at least 100ms", o.insertTime)
	case o.purgeBatch < 1:
		return fmt.Errorf("-scale-purge-batch is %d; use a positive number of rows", o.purgeBatch)
	}
	return nil
}

// scaleResults holds the three scale cases.
type scaleResults struct {
	ManySources *manySourcesResult `json:"many_sources"`
	Purge       *purgeScaleResult  `json:"purge_while_inserting"`
	Spraying    *sprayingResult    `json:"spraying"`
}

// runScaleCases runs the scale cases on the scratch database of the run,
// after the matrix.
func runScaleCases(ctx context.Context, env *benchEnv, opts options) (*scaleResults, error) {
	results := &scaleResults{}
	var err error
	if opts.scale.cases[scaleCaseSources] {
		if results.ManySources, err = measureManySources(ctx, env, opts.scale.sources); err != nil {
			return nil, fmt.Errorf("scale case with %d sources against one email: %w", opts.scale.sources, err)
		}
	}
	if opts.scale.cases[scaleCasePurge] {
		if results.Purge, err = measurePurgeAtScale(ctx, env, opts.scale); err != nil {
			return nil, fmt.Errorf("scale case of a purge while inserting: %w", err)
		}
	}
	if opts.scale.cases[scaleCaseSpraying] {
		if results.Spraying, err = measureSpraying(ctx, env, opts.scale.accounts); err != nil {
			return nil, fmt.Errorf("scale case of spraying %d accounts: %w", opts.scale.accounts, err)
		}
	}
	return results, nil
}

func printScale(w io.Writer, s *scaleResults) {
	fmt.Fprintf(w, "\nScale cases\n")
	if s.ManySources != nil {
		printManySources(w, s.ManySources)
	}
	if s.Purge != nil {
		printPurgeAtScale(w, s.Purge)
	}
	if s.Spraying != nil {
		printSpraying(w, s.Spraying)
	}
}
