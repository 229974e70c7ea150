-- emission_id (DefectEvent v2, PartInspected v3): which close of a part a row comes from. A part
-- re-processed after a crash may be closed again with another defect set (other batch boundaries,
-- other track ids, hence other defect event ids); queries keep one verdict per part and only the
-- defects whose emission_id is that verdict's. Rows written before are '' on both sides.
-- 18.16 has no ADD COLUMN IF NOT EXISTS: the runner skips an ADD COLUMN whose column exists, so a
-- migration interrupted between the two statements is simply applied again.
ALTER TABLE defects ADD COLUMN emission_id String DEFAULT '';
ALTER TABLE parts ADD COLUMN emission_id String DEFAULT '';
