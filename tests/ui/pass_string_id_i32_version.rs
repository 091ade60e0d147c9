use diesel::prelude::*;
use diesel_l2::Cached;

mod schema {
    diesel::table! {
        accounts (account_code) {
            account_code -> Text,
            rev -> Integer,
            owner -> Nullable<Text>,
            blob -> Binary,
        }
    }
}

#[derive(Queryable, Selectable, Clone, Debug, Cached)]
#[diesel(table_name = crate::schema::accounts, primary_key(code))]
pub struct Account {
    #[cache(id)]
    #[diesel(column_name = account_code)]
    pub code: String,
    #[cache(version)]
    #[diesel(column_name = rev)]
    pub revision: i32,
    pub owner: Option<String>,
    #[cache(shallow)]
    pub blob: Vec<u8>,
}

fn main() {
    let config = <Account as diesel_l2::CachedEntity>::cache_config();
    assert!(config.name == "accounts");
    assert!(config.max_entries == Some(diesel_l2::RegionConfig::DEFAULT_MAX_ENTRIES));
    let account = Account {
        code: "A".into(),
        revision: 1,
        owner: None,
        blob: vec![1, 2, 3],
    };
    let id: String = diesel_l2::CachedEntity::id(&account);
    assert!(id == "A");
    assert!(diesel_l2::CachedEntity::with_version(&account, i64::MAX).is_none());
}
