//! The registry's rules end to end on a real log store: ids, versions,
//! deletes, levels, and a replay that rebuilds the same state.

use fluxo_log::LogStore;

use crate::*;

const USER_V1: &str =
    r#"{"type":"record","name":"User","namespace":"shop","fields":[{"name":"id","type":"long"}]}"#;
const USER_V2: &str = r#"{"type":"record","name":"User","namespace":"shop","fields":[{"name":"id","type":"long"},{"name":"email","type":"string","default":""}]}"#;
const USER_NO_DEFAULT: &str = r#"{"type":"record","name":"User","namespace":"shop","fields":[{"name":"id","type":"long"},{"name":"email","type":"string"}]}"#;
const ADDRESS: &str = r#"{"type":"record","name":"Address","namespace":"shop","fields":[{"name":"city","type":"string"}]}"#;
const CUSTOMER: &str = r#"{"type":"record","name":"Customer","namespace":"shop","fields":[{"name":"home","type":"shop.Address"}]}"#;

fn open(dir: &std::path::Path) -> (LogStore, SchemaRegistry) {
    let store = LogStore::open(dir).unwrap();
    let registry = SchemaRegistry::open(&store).unwrap();
    (store, registry)
}

#[tokio::test]
async fn ids_are_global_and_shared_by_identical_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, r) = open(dir.path());
    let a = r.register("a-value", USER_V1).await.unwrap();
    assert_eq!(a, 1);
    // The same schema again, even laid out differently: same id, no new version.
    let spaced = USER_V1.replace(',', " , ");
    assert_eq!(r.register("a-value", &spaced).await.unwrap(), a);
    assert_eq!(r.versions("a-value", false).unwrap(), vec![1]);
    // Under another subject: the same id, that subject's version 1.
    assert_eq!(r.register("b-value", USER_V1).await.unwrap(), a);
    assert_eq!(r.latest("b-value").unwrap().version, 1);
    let b2 = r.register("a-value", USER_V2).await.unwrap();
    assert_eq!(b2, 2);
    assert_eq!(r.latest("a-value").unwrap().version, 2);
    assert_eq!(
        r.versions_of(a, false).unwrap(),
        vec![("a-value".to_string(), 1), ("b-value".to_string(), 1)]
    );
    let schema = r.schema_by_id(b2).unwrap();
    assert_eq!(schema.text, USER_V2);
    assert!(matches!(schema.avro, apache_avro::Schema::Record(_)));
    assert!(r.schema_by_id(99).is_none());
    let found = r
        .lookup("a-value", NewSchema::avro(USER_V1), false)
        .unwrap();
    assert_eq!((found.version, found.schema.id), (1, a));
    assert_eq!(
        r.lookup("a-value", NewSchema::avro(r#""string""#), false)
            .unwrap_err()
            .error_code(),
        40403
    );
    assert_eq!(
        r.lookup("nope", NewSchema::avro(USER_V1), false)
            .unwrap_err()
            .error_code(),
        40401
    );
}

#[tokio::test]
async fn registration_follows_the_subject_level() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, r) = open(dir.path());
    r.register("u", USER_V1).await.unwrap();
    let err = r.register("u", USER_NO_DEFAULT).await.unwrap_err();
    assert_eq!(err.error_code(), 409, "{err}");
    assert!(err.to_string().contains("incompatible"), "{err}");
    assert_eq!(
        r.versions("u", false).unwrap(),
        vec![1],
        "nothing registered"
    );
    // The check endpoint agrees, without registering.
    assert!(!r
        .check_compatibility(
            "u",
            Some(VersionSpec::Latest),
            NewSchema::avro(USER_NO_DEFAULT)
        )
        .unwrap()
        .is_empty());
    assert!(r
        .check_compatibility("u", None, NewSchema::avro(USER_V2))
        .unwrap()
        .is_empty());
    r.set_level(Some("u"), CompatibilityLevel::None)
        .await
        .unwrap();
    assert_eq!(r.effective_level("u"), CompatibilityLevel::None);
    r.register("u", USER_NO_DEFAULT).await.unwrap();
    // Back to the global level (BACKWARD); transitive makes v1 count too.
    assert_eq!(
        r.delete_level(Some("u")).await.unwrap(),
        CompatibilityLevel::None
    );
    assert_eq!(
        r.delete_level(Some("u")).await.unwrap_err().error_code(),
        40401
    );
    r.set_level(None, CompatibilityLevel::BackwardTransitive)
        .await
        .unwrap();
    let v4 = r#"{"type":"record","name":"User","namespace":"shop","fields":[{"name":"id","type":"long"},{"name":"email","type":"string"},{"name":"age","type":"int","default":0}]}"#;
    let err = r.register("u", v4).await.unwrap_err();
    assert_eq!(err.error_code(), 409, "v1 has no email for v4 to read");
    r.set_level(None, CompatibilityLevel::Backward)
        .await
        .unwrap();
    r.register("u", v4).await.unwrap();
    assert_eq!(r.versions("u", false).unwrap(), vec![1, 2, 3]);
    assert_eq!(
        r.register_schema("u", NewSchema::avro("{not json"))
            .await
            .unwrap_err()
            .error_code(),
        42201
    );
}

#[tokio::test]
async fn soft_then_hard_delete_with_confluents_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, r) = open(dir.path());
    let id1 = r.register("s", USER_V1).await.unwrap();
    let id2 = r.register("s", USER_V2).await.unwrap();
    // A hard delete must follow a soft one.
    let e = r
        .delete_version("s", VersionSpec::Number(1), true)
        .await
        .unwrap_err();
    assert_eq!(e.error_code(), 40407);
    assert_eq!(
        r.delete_subject("s", true).await.unwrap_err().error_code(),
        40405
    );
    assert_eq!(
        r.delete_version("s", VersionSpec::Number(1), false)
            .await
            .unwrap(),
        1
    );
    let e = r
        .delete_version("s", VersionSpec::Number(1), false)
        .await
        .unwrap_err();
    assert_eq!(e.error_code(), 40406);
    assert_eq!(
        r.delete_version("s", VersionSpec::Number(7), false)
            .await
            .unwrap_err()
            .error_code(),
        40402
    );
    assert_eq!(r.versions("s", false).unwrap(), vec![2]);
    assert_eq!(r.versions("s", true).unwrap(), vec![1, 2]);
    assert_eq!(
        r.version("s", VersionSpec::Number(1), false)
            .unwrap_err()
            .error_code(),
        40402
    );
    assert!(
        r.version("s", VersionSpec::Number(1), true)
            .unwrap()
            .deleted
    );
    // Soft-deleted schemas still decode old messages.
    assert!(r.schema_by_id(id1).is_some());
    // The subject: soft, then again (40404), then hard.
    r.set_level(Some("s"), CompatibilityLevel::Full)
        .await
        .unwrap();
    assert_eq!(r.delete_subject("s", false).await.unwrap(), vec![2]);
    assert_eq!(
        r.subject_level("s"),
        None,
        "a subject delete drops its level"
    );
    assert_eq!(
        r.delete_subject("s", false).await.unwrap_err().error_code(),
        40404
    );
    assert!(r.subjects(false, false).is_empty());
    assert_eq!(r.subjects(true, false), vec!["s".to_string()]);
    assert_eq!(r.versions("s", false).unwrap_err().error_code(), 40401);
    assert!(r.latest("s").is_none());
    assert_eq!(r.delete_subject("s", true).await.unwrap(), vec![1, 2]);
    assert!(r.subjects(true, false).is_empty());
    assert!(r.schema_by_id(id2).is_none(), "hard-deleted everywhere");
    assert_eq!(
        r.delete_subject("s", true).await.unwrap_err().error_code(),
        40401
    );
    // Ids are not reused; versions restart once nothing of the subject is left.
    let id3 = r.register("s", r#""string""#).await.unwrap();
    assert_eq!(id3, 3);
    assert_eq!(r.latest("s").unwrap().version, 1);
    // A soft-deleted schema registered again keeps its id, with a new version.
    r.delete_version("s", VersionSpec::Latest, false)
        .await
        .unwrap();
    assert_eq!(r.register("s", r#""string""#).await.unwrap(), id3);
    assert_eq!(r.versions("s", true).unwrap(), vec![1, 2]);
}

#[tokio::test]
async fn references_resolve_and_protect_what_they_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (store, r) = open(dir.path());
    r.register("address", ADDRESS).await.unwrap();
    let without = r.register("customer", CUSTOMER).await.unwrap_err();
    assert_eq!(without.error_code(), 42201, "{without}");
    let reference = SchemaReference {
        name: "shop.Address".into(),
        subject: "address".into(),
        version: -1,
    };
    let schema = NewSchema {
        references: vec![reference],
        ..NewSchema::avro(CUSTOMER)
    };
    let (id, _) = r.register_schema("customer", schema).await.unwrap();
    let stored = r.schema_by_id(id).unwrap();
    assert_eq!(
        stored.references[0].version, 1,
        "-1 is pinned to the latest"
    );
    assert_eq!(stored.referenced.len(), 1);
    assert_eq!(
        r.referenced_by("address", VersionSpec::Number(1)).unwrap(),
        vec![id]
    );
    let e = r.delete_subject("address", false).await.unwrap_err();
    assert_eq!(e.error_code(), 42206);
    // Still resolvable after a restart.
    drop(r);
    let r = SchemaRegistry::open(&store).unwrap();
    assert_eq!(r.schema_by_id(id).unwrap().referenced.len(), 1);
}

#[tokio::test]
async fn a_restart_rebuilds_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let (store, r) = open(dir.path());
        r.register("a", USER_V1).await.unwrap();
        r.register("a", USER_V2).await.unwrap();
        r.register("b", USER_V2).await.unwrap();
        r.register("c", r#""string""#).await.unwrap();
        r.register("d", r#""long""#).await.unwrap();
        r.set_level(None, CompatibilityLevel::Full).await.unwrap();
        r.set_level(Some("b"), CompatibilityLevel::None)
            .await
            .unwrap();
        r.set_level(Some("c"), CompatibilityLevel::Forward)
            .await
            .unwrap();
        r.delete_level(Some("c")).await.unwrap();
        r.delete_version("a", VersionSpec::Number(1), false)
            .await
            .unwrap();
        // The highest id is hard-deleted: its number must stay taken.
        r.delete_subject("d", false).await.unwrap();
        r.delete_subject("d", true).await.unwrap();
        let snapshot = r.snapshot();
        // No clean close: what was acknowledged is already on disk.
        drop(r);
        drop(store);
        snapshot
    };
    let (_store, r) = open(dir.path());
    assert_eq!(r.snapshot(), before);
    assert_eq!(r.global_level(), CompatibilityLevel::Full);
    assert_eq!(
        r.register("e", r#""int""#).await.unwrap(),
        5,
        "id 4 was given to d"
    );
}
