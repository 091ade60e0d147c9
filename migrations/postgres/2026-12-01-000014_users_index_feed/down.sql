DROP TRIGGER IF EXISTS "users_diesel_l2_v2_bump" ON "users";
DROP TRIGGER IF EXISTS "users_diesel_l2_v2_ins" ON "users";
DROP TRIGGER IF EXISTS "users_diesel_l2_v2_upd" ON "users";
DROP TRIGGER IF EXISTS "users_diesel_l2_v2_del" ON "users";
DROP TRIGGER IF EXISTS "users_diesel_l2_v2_trunc" ON "users";
