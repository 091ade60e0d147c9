DROP TRIGGER IF EXISTS "users_diesel_l2_v2_ins";
DROP TRIGGER IF EXISTS "users_diesel_l2_v2_upd";
DROP TRIGGER IF EXISTS "users_diesel_l2_v2_del";
