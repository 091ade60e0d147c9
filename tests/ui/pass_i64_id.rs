use diesel::prelude::*;
use diesel_l2::{Cached, CachedEntity, RegionConfig};

diesel::table! {
    users (id) {
        id -> BigInt,
        version -> BigInt,
        email -> Text,
        bio -> Nullable<Text>,
    }
}

#[derive(Queryable, Selectable, Clone, Debug, Cached)]
#[diesel(table_name = users)]
pub struct User {
    pub id: i64,
    pub version: i64,
    pub email: String,
    pub bio: Option<String>,
}

fn main() {
    let config = <User as diesel_l2::CachedEntity>::cache_config();
    assert_eq!(config, RegionConfig::new("users"));
    assert_eq!(<User as CachedEntity>::TABLE, "users");
    let user = User {
        id: 7,
        version: 3,
        email: "a@b.c".into(),
        bio: None,
    };
    assert_eq!(user.id(), 7_i64);
    assert_eq!(CachedEntity::version(&user), 3);
    assert_eq!(user.with_version(4).map(|u| u.version), Some(4));
}
