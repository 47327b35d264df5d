-- migrate:up

-- The demo's own table, created after pgguard's migrations and recorded in
-- demo_schema_migrations, so it never mixes with the library's schema.
CREATE TABLE orders (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id text NOT NULL,
    item            text NOT NULL,
    quantity        integer NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT orders_organization_id_check CHECK (organization_id <> ''),
    CONSTRAINT orders_item_check CHECK (item <> ''),
    CONSTRAINT orders_quantity_check CHECK (quantity > 0)
);

CREATE INDEX orders_organization_id_idx ON orders (organization_id);

-- migrate:down

DROP TABLE orders;
