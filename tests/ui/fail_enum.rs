use diesel_l2::Cached;

#[derive(Clone, Cached)]
pub enum User {
    Active { id: i64, version: i64 },
    Deleted,
}

fn main() {}
