DROP TRIGGER IF EXISTS "posts_diesel_l2_v2_bump" ON "posts";
DROP TRIGGER IF EXISTS "posts_diesel_l2_v2_ins" ON "posts";
DROP TRIGGER IF EXISTS "posts_diesel_l2_v2_upd" ON "posts";
DROP TRIGGER IF EXISTS "posts_diesel_l2_v2_del" ON "posts";
DROP TRIGGER IF EXISTS "posts_diesel_l2_v2_trunc" ON "posts";
