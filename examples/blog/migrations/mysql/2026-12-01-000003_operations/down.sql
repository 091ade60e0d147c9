DROP TABLE diesel_l2_operations;
