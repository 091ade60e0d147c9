use diesel::prelude::*;
use diesel_l2::{Cached, UniqueKey};

diesel::table! {
    accounts (id) {
        id -> BigInt,
        version -> BigInt,
        tenant_id -> BigInt,
        email -> Text,
        login -> Text,
    }
}

#[derive(Queryable, Selectable, Clone, Debug, Cached)]
#[diesel(table_name = accounts)]
#[cache(unique(tenant_id, email))]
pub struct Account {
    pub id: i64,
    pub version: i64,
    pub tenant_id: i64,
    pub email: String,
    #[cache(unique)]
    pub login: String,
}

fn main() {
    let a = Account { id: 1, version: 1, tenant_id: 7, email: "a@x".into(), login: "ada".into() };
    assert_eq!(AccountByLogin::of(&a), AccountByLogin("ada".into()));
    assert_eq!(AccountByTenantIdEmail::of(&a), AccountByTenantIdEmail(7, "a@x".into()));
    assert_eq!(<AccountByTenantIdEmail as UniqueKey>::NAME, "tenant_id, email");
}
