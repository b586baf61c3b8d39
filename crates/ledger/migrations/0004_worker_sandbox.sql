-- What each worker's per-task sandbox can enforce (its startup preflight, JSON), for
-- /health and the D-Bus Sandbox property.
ALTER TABLE workers ADD COLUMN sandbox TEXT CHECK (sandbox IS NULL OR json_valid(sandbox));
