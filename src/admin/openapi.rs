//! The OpenAPI document of the admin API (`/openapi.json`), built from the handlers of the
//! route files.

use super::{ApiErrorBody, data_routes, policy_routes, routes};
use crate::protocol::ErrorCode;
use utoipa::OpenApi;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every call that changes something may be refused with `503 UNAVAILABLE` while the store
/// cannot write: documented once here for every `POST`, `PUT` and `DELETE` under `/v1`.
struct UnavailableAddon;

impl utoipa::Modify for UnavailableAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let unavailable = ResponseBuilder::new()
            .description(
                "UNAVAILABLE: the store cannot write (e.g. its disk is full); nothing was changed. \
                 Retry later; /healthz tells when the store takes writes again.",
            )
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ApiErrorBody")))
                    .build(),
            )
            .build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") || path == "/v1/tokens" {
                continue;
            }
            for op in [&mut item.post, &mut item.put, &mut item.delete]
                .into_iter()
                .flatten()
            {
                op.responses
                    .responses
                    .entry("503".to_owned())
                    .or_insert_with(|| unavailable.clone().into());
            }
        }
    }
}

/// The OpenAPI document of the admin API.
#[derive(OpenApi)]
#[openapi(
    info(title = "roomcast admin API", description = "Rooms, members, messages and tokens of a roomcast relay."),
    paths(routes::mint_token, routes::create_room, routes::list_rooms, routes::get_room,
          routes::destroy_room, routes::destroy_rooms, routes::list_members, routes::check_members,
          routes::send_room_message, routes::send_messages, routes::broadcast,
          routes::healthz, routes::render_metrics, routes::openapi_json,
          policy_routes::put_destroy_policy, policy_routes::put_destroy_at,
          policy_routes::delete_destroy_at, policy_routes::put_keepalive,
          policy_routes::delete_keepalive, policy_routes::get_keepalive,
          policy_routes::post_bans, policy_routes::delete_ban, policy_routes::get_bans,
          policy_routes::post_mutes, policy_routes::delete_mute, policy_routes::get_mutes,
          policy_routes::put_mute_all, policy_routes::delete_mute_all,
          policy_routes::post_mute_all_whitelist, policy_routes::delete_mute_all_whitelist,
          policy_routes::get_mute_all_whitelist, policy_routes::post_user_whitelist,
          policy_routes::delete_user_whitelist, policy_routes::get_user_whitelist,
          policy_routes::post_global_mutes, policy_routes::delete_global_mute,
          policy_routes::get_global_mutes, policy_routes::post_type_whitelist,
          policy_routes::delete_type_whitelist, policy_routes::get_type_whitelist,
          policy_routes::post_low_types, policy_routes::delete_low_type,
          policy_routes::get_low_types,
          data_routes::get_attributes, data_routes::put_attributes,
          data_routes::delete_attribute, data_routes::delete_attributes,
          data_routes::recall, data_routes::history),
    components(schemas(ApiErrorBody, ErrorCode, routes::Health)),
    modifiers(&SecurityAddon, &UnavailableAddon)
)]
pub struct ApiDoc;
