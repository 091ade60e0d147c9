DROP TRIGGER IF EXISTS "follows_diesel_l2_v2_bump" ON "follows";
DROP TRIGGER IF EXISTS "follows_diesel_l2_v2_ins" ON "follows";
DROP TRIGGER IF EXISTS "follows_diesel_l2_v2_upd" ON "follows";
DROP TRIGGER IF EXISTS "follows_diesel_l2_v2_del" ON "follows";
DROP TRIGGER IF EXISTS "follows_diesel_l2_v2_trunc" ON "follows";
