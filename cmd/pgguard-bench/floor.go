package main

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Operations of the floor: the least a design that keeps its state in
// Postgres can do per decision, one statement on one indexed row.
const (
	opFloorUpsert = "floor: single-row upsert"
	opFloorSelect = "floor: indexed select"
	// opFloorSelectRecord reads a stored response the way a replay must:
	// one indexed select of the idempotency record, with no decisions.
	opFloorSelectRecord = "floor: select stored response"
)

// floorWorkloads returns the raw upsert and the raw indexed select on rows
// of bench_floor that seedFloorKeys created, and the raw select of a
// stored response that seedIdempotencyKeys created.
func floorWorkloads(pool *pgxpool.Pool) []*workload {
	upsert := func(ctx context.Context, key int64) error {
		_, err := pool.Exec(ctx, `
			INSERT INTO bench_floor (key, hits) VALUES ($1, 1)
			ON CONFLICT (key) DO UPDATE
			SET hits = bench_floor.hits + 1, updated_at = now()`,
			keysFloor.email(key))
		return err
	}
	selectRow := func(ctx context.Context, key int64) error {
		var hits int
		return pool.QueryRow(ctx, `SELECT hits FROM bench_floor WHERE key = $1`, keysFloor.email(key)).Scan(&hits)
	}
	selectRecord := func(ctx context.Context, key int64) error {
		req := orderRequest(keyPrefixReplay, key%storedKeys)
		var status int
		var headers []byte
		var body string
		return pool.QueryRow(ctx, `
			SELECT response_status, response_headers, response_body_json
			FROM idempotency_records
			WHERE scope = $1 AND route = $2 AND key = $3`,
			"org:"+req.OrganizationID, req.Method+" "+req.Route, req.Key,
		).Scan(&status, &headers, &body)
	}
	return []*workload{
		{operation: opFloorUpsert, design: designFloor, op: upsert},
		{operation: opFloorSelect, design: designFloor, op: selectRow},
		{operation: opFloorSelectRecord, design: designFloor, op: selectRecord},
	}
}

// seedFloorKeys creates the rows of keys 0 to count-1, so that the upsert
// takes its update path like the lockout counters of a returning account.
func seedFloorKeys(ctx context.Context, pool *pgxpool.Pool, count int64) error {
	_, err := pool.Exec(ctx, `
		INSERT INTO bench_floor (key)
		SELECT $1 || '-' || n || '@example.com'
		FROM generate_series(0, $2::bigint - 1) n`,
		keysFloor.name, count)
	if err != nil {
		return fmt.Errorf("failed to seed the floor's rows: %w", err)
	}
	return nil
}
