-- How often the process died while the job ran (its lease expired, or it was found running at
-- start-up). A job that keeps killing the service fails instead of being requeued forever.
ALTER TABLE jobs ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;
