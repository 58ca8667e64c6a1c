/* om_err.h — every error orgmesh can return, in one table.
 *
 * Each row gives a code its name (which is also the stable ErrorInfo `reason`
 * clients see), the gRPC status it maps to and a default message (English
 * words, never an enum name: API-01; the same reason's text in the caller's
 * language is in common/l10n_catalog.c, which needs a row for each code). Functions
 * that can fail return 0 or one of the negative OM_E_* codes (libuv style). */
#ifndef OM_ERR_H
#define OM_ERR_H

#include <grpc/status.h>

#define OM_ERR_MAP(XX)                                                                 \
    /* generic */                                                                       \
    XX(INTERNAL, GRPC_STATUS_INTERNAL, "internal error")                                \
    XX(NOMEM, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory")                          \
    XX(UNAVAILABLE, GRPC_STATUS_UNAVAILABLE, "a dependency is unavailable")             \
    XX(DEADLINE_EXCEEDED, GRPC_STATUS_DEADLINE_EXCEEDED, "deadline exceeded")           \
    XX(CANCELLED, GRPC_STATUS_CANCELLED, "the call was cancelled")                      \
    XX(UNIMPLEMENTED, GRPC_STATUS_UNIMPLEMENTED, "method not implemented")              \
    XX(INVALID_ARGUMENT, GRPC_STATUS_INVALID_ARGUMENT, "invalid argument")              \
    XX(MALFORMED_MESSAGE, GRPC_STATUS_INVALID_ARGUMENT, "the message cannot be parsed") \
    XX(INVALID_PAGE_TOKEN, GRPC_STATUS_INVALID_ARGUMENT, "invalid page token")          \
    XX(BATCH_TOO_LARGE, GRPC_STATUS_INVALID_ARGUMENT, "too many items in one batch")    \
    XX(NOT_FOUND, GRPC_STATUS_NOT_FOUND, "not found")                                   \
    XX(ALREADY_EXISTS, GRPC_STATUS_ALREADY_EXISTS, "already exists")                    \
    XX(ETAG_MISMATCH, GRPC_STATUS_ABORTED,                                              \
       "the resource changed since it was read (stale etag)")                           \
    XX(CONCURRENT_MODIFICATION, GRPC_STATUS_ABORTED,                                    \
       "a concurrent change conflicted; retry")                                         \
    XX(REQUEST_ID_REUSED, GRPC_STATUS_INVALID_ARGUMENT,                                 \
       "this request_id was already used for a different request")                     \
    XX(FAILED_PRECONDITION, GRPC_STATUS_FAILED_PRECONDITION, "failed precondition")     \
    /* request checks every call passes (common/pbcheck.c) */                           \
    XX(INVALID_UTF8, GRPC_STATUS_INVALID_ARGUMENT,                                      \
       "a string is not valid UTF-8 (or contains U+0000)")                             \
    XX(TIMESTAMP_OUT_OF_RANGE, GRPC_STATUS_INVALID_ARGUMENT,                            \
       "a timestamp lies outside 0001-01-01..9999-12-31 or its nanos are out of range") \
    XX(DURATION_OUT_OF_RANGE, GRPC_STATUS_INVALID_ARGUMENT,                             \
       "a duration exceeds 10,000 years or its nanos are out of range")                \
    XX(NESTING_TOO_DEEP, GRPC_STATUS_INVALID_ARGUMENT, "the message is nested too deeply") \
    /* identity (SPEC 8) */                                                             \
    XX(UNAUTHENTICATED, GRPC_STATUS_UNAUTHENTICATED, "missing or invalid credentials")  \
    XX(TOKEN_EXPIRED, GRPC_STATUS_UNAUTHENTICATED, "the token has expired")             \
    XX(KEY_NOT_BOUND_TO_SUBJECT, GRPC_STATUS_UNAUTHENTICATED,                           \
       "the token's signing key may not sign for this identity")                       \
    XX(PERMISSION_DENIED, GRPC_STATUS_PERMISSION_DENIED, "permission denied")           \
    XX(SERVICE_IDENTITY_REQUIRED, GRPC_STATUS_PERMISSION_DENIED,                        \
       "this method is only for orgmesh services")                                     \
    XX(SERVICE_NOT_ALLOWED, GRPC_STATUS_PERMISSION_DENIED,                              \
       "this service identity may not call this method")                               \
    /* accounts */                                                                      \
    XX(EMAIL_TAKEN, GRPC_STATUS_ALREADY_EXISTS, "this email address is already in use") \
    XX(ACCOUNT_DEACTIVATED, GRPC_STATUS_FAILED_PRECONDITION, "the account is deactivated") \
    XX(PARTNER_IDENTITY_FORBIDDEN, GRPC_STATUS_PERMISSION_DENIED,                       \
       "only the client can remove a user from the client account")                    \
    /* organizations (SPEC 3) */                                                        \
    XX(ORG_ACCOUNT_LIMIT, GRPC_STATUS_RESOURCE_EXHAUSTED,                               \
       "an organization holds at most 5 accounts")                                     \
    XX(MFA_REQUIRED, GRPC_STATUS_UNAUTHENTICATED,                                       \
       "a second factor verified within the last minutes is required")                 \
    XX(ACKNOWLEDGEMENT_REQUIRED, GRPC_STATUS_FAILED_PRECONDITION,                       \
       "the data-sharing impact must be acknowledged")                                 \
    XX(LAST_ENTERPRISE_ACCOUNT, GRPC_STATUS_FAILED_PRECONDITION,                        \
       "the last account with Marketing Hub Enterprise cannot be removed; delete the organization") \
    XX(NOT_ENTERPRISE_ACCOUNT, GRPC_STATUS_FAILED_PRECONDITION,                         \
       "the acting account must have Marketing Hub Enterprise")                            \
    XX(ACCOUNT_NOT_ELIGIBLE, GRPC_STATUS_FAILED_PRECONDITION,                           \
       "an account is not eligible for the organization")                              \
    XX(SANDBOX, GRPC_STATUS_FAILED_PRECONDITION, "sandbox accounts cannot join")        \
    XX(NO_PROFESSIONAL_SUBSCRIPTION, GRPC_STATUS_FAILED_PRECONDITION,                   \
       "the account has no Professional or Enterprise subscription")                   \
    XX(HOSTING_LOCATION_MISMATCH, GRPC_STATUS_FAILED_PRECONDITION,                      \
       "the accounts are hosted in different locations")                               \
    XX(DEACTIVATED, GRPC_STATUS_FAILED_PRECONDITION, "the account is deactivated")      \
    XX(ALREADY_IN_ORGANIZATION, GRPC_STATUS_FAILED_PRECONDITION,                        \
       "the account is already in an organization")                                    \
    XX(NOT_SUPER_ADMIN, GRPC_STATUS_PERMISSION_DENIED,                                  \
       "the actor must be a super admin in every account concerned")                     \
    XX(NOT_IN_ORGANIZATION, GRPC_STATUS_FAILED_PRECONDITION,                            \
       "the account is not in this organization")                                      \
    /* connections (SPEC 4) */                                                          \
    XX(SENSITIVE_DATA_SOURCE, GRPC_STATUS_FAILED_PRECONDITION,                          \
       "an account with sensitive data cannot be a mirroring source")                  \
    XX(SAME_ACCOUNT, GRPC_STATUS_INVALID_ARGUMENT,                                      \
       "a connection links two different accounts")                                    \
    /* assets (SPEC 5) */                                                               \
    XX(COPY_NOT_ALLOWED, GRPC_STATUS_FAILED_PRECONDITION,                               \
       "asset copying does not flow from the source to the target")                    \
    XX(MISSING_DEPENDENCY, GRPC_STATUS_FAILED_PRECONDITION,                             \
       "a referenced asset is not copied")                                             \
    XX(NAME_CONFLICT, GRPC_STATUS_ALREADY_EXISTS,                                       \
       "an asset with this name already exists")                                       \
    XX(ASSET_IN_USE, GRPC_STATUS_FAILED_PRECONDITION,                                   \
       "another asset references this asset")                                          \
    /* partners (SPEC 6) */                                                             \
    XX(EMAIL_CONNECTED_TO_OTHER_PARTNER, GRPC_STATUS_ALREADY_EXISTS,                    \
       "Their email address is already connected with another partner record for this client") \
    XX(CONFIRMATION_REQUIRED, GRPC_STATUS_INVALID_ARGUMENT,                             \
       "type the word REMOVE to confirm")                                                       \
    XX(NOT_PARTNER_EMPLOYEE, GRPC_STATUS_FAILED_PRECONDITION,                           \
       "only tagged partner employees can be assigned")                                \
    XX(NOT_PARTNER_ACCOUNT, GRPC_STATUS_FAILED_PRECONDITION,                            \
       "the account is not a partner agency's account")                                         \
    XX(RESEND_TOO_SOON, GRPC_STATUS_RESOURCE_EXHAUSTED,                                 \
       "an access request can be resent at most once per hour")                        \
    XX(RATE_LIMITED, GRPC_STATUS_RESOURCE_EXHAUSTED,                                    \
       "too many requests of this kind; retry after the RetryInfo delay")              \
    XX(REQUEST_NOT_PENDING, GRPC_STATUS_FAILED_PRECONDITION,                            \
       "the access request is no longer pending")                                      \
    XX(INVALID_TOKEN, GRPC_STATUS_PERMISSION_DENIED,                                    \
       "the access token is not valid for this user")                                  \
    /* issue 18: consistency tokens (common/ctoken.h, CONN-13) */                      \
    XX(INVALID_CONSISTENCY_TOKEN, GRPC_STATUS_INVALID_ARGUMENT,                         \
       "not a consistency token of this cluster")                                      \
    XX(CONSISTENCY_NOT_REACHED, GRPC_STATUS_UNAVAILABLE,                                \
       "the state the consistency token names was not reached in time; retry") \
    /* issue 17: partner grants (PART-14, PART-18, PART-20, PART-17) */                \
    XX(ROLE_NOT_GRANTABLE, GRPC_STATUS_INVALID_ARGUMENT,                                \
       "SUPER_ADMIN is never granted through a partner assignment")                    \
    XX(ROLES_NOT_REQUESTED, GRPC_STATUS_INVALID_ARGUMENT,                               \
       "the approved roles must be among the requested roles")                         \
    XX(DURATION_NOT_ALLOWED, GRPC_STATUS_FAILED_PRECONDITION,                           \
       "grants without an end are not allowed here")                                   \
    XX(PARTNER_ACCESS_BLOCKED, GRPC_STATUS_FAILED_PRECONDITION,                         \
       "the client has revoked this partner's access")                                 \
    XX(GRANT_NOT_ACTIVE, GRPC_STATUS_FAILED_PRECONDITION,                               \
       "the grant is not active or has no end")

typedef enum {
    OM_OK = 0,
    OM__ERR_FIRST = -1000,
#define OM_ERR_ENUM(name, status, msg) OM_E_##name,
    OM_ERR_MAP(OM_ERR_ENUM)
#undef OM_ERR_ENUM
    OM__ERR_LAST
} om_err;

/* Name of a code ("ORG_ACCOUNT_LIMIT"), its gRPC status and default message.
 * Unknown codes map to INTERNAL. */
const char *om_err_name(int code);
grpc_status_code om_err_status(int code);
const char *om_err_message(int code);

#endif
