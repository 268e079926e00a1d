/*
 * Enhanced mail system status codes (RFC 3463, RFC 7505 for 5.1.10):
 * the ones facteur gives, named, with their class and the registry's
 * text, so that a delivery result, a DSN and an SMTP reply spell the
 * same code from one table instead of a string typed where it is used.
 */
#ifndef FACTEUR_STATUS_CODE_H
#define FACTEUR_STATUS_CODE_H

enum status_class {
	STATUS_CLASS_SUCCESS = 2,
	STATUS_CLASS_TRANSIENT = 4,
	STATUS_CLASS_PERMANENT = 5,
};

enum status_code {
	STATUS_OK,			/* 2.0.0 */
	STATUS_SENDER_OK,		/* 2.1.0 */
	STATUS_RCPT_OK,			/* 2.1.5 */
	STATUS_VRFY,			/* 2.5.2 */
	STATUS_AUTH_OK,			/* 2.7.0 */
	STATUS_MAILBOX_UNAVAILABLE,	/* 4.2.0 */
	STATUS_MAILBOX_BUSY,		/* 4.2.1 */
	STATUS_LOCAL_ERROR,		/* 4.3.0 */
	STATUS_SYSTEM_STORAGE,		/* 4.3.1 */
	STATUS_SHUTDOWN,		/* 4.3.2 */
	STATUS_SYSTEM_CONGESTED,	/* 4.3.5 */
	STATUS_NO_ANSWER,		/* 4.4.1 */
	STATUS_BAD_CONNECTION,		/* 4.4.2 */
	STATUS_ROUTING_FAILED,		/* 4.4.3 */
	STATUS_ROUTING_UNAVAILABLE,	/* 4.4.4 */
	STATUS_LOOP_TRANSIENT,		/* 4.4.6 */
	STATUS_EXPIRED,			/* 4.4.7 */
	STATUS_TOO_MANY_RCPTS,		/* 4.5.3 */
	STATUS_SECURITY_TRANSIENT,	/* 4.7.0 */
	STATUS_NOT_AUTHORIZED_TRANSIENT, /* 4.7.1 */
	STATUS_TLS_UNAVAILABLE,		/* 4.7.4 */
	STATUS_TLS_FAILED,		/* 4.7.5 */
	STATUS_AUTH_REJECTED_TRANSIENT, /* 4.7.8 */
	STATUS_PERMANENT_ERROR,		/* 5.0.0 */
	STATUS_BAD_MAILBOX,		/* 5.1.1 */
	STATUS_BAD_SYSTEM,		/* 5.1.2 */
	STATUS_BAD_RCPT_SYNTAX,		/* 5.1.3 */
	STATUS_BAD_SENDER_SYNTAX,	/* 5.1.7 */
	STATUS_NULL_MX,			/* 5.1.10 */
	STATUS_SYSTEM_PERMANENT,		/* 5.3.0 */
	STATUS_TOO_BIG,			/* 5.3.4 */
	STATUS_LOOP,			/* 5.4.6 */
	STATUS_BAD_COMMAND,		/* 5.5.1 */
	STATUS_SYNTAX_ERROR,		/* 5.5.2 */
	STATUS_BAD_ARGS,		/* 5.5.4 */
	STATUS_NEEDS_UTF8,		/* 5.6.7 */
	STATUS_SECURITY_PERMANENT,	/* 5.7.0 */
	STATUS_NOT_AUTHORIZED,		/* 5.7.1 */
	STATUS_AUTH_FAILED,		/* 5.7.8 */
	STATUS_ENCRYPTION_REQUIRED,	/* 5.7.11 */
	STATUS_ENCRYPTION_NEEDED,	/* 5.7.10 (REQUIRETLS, RFC 8689) */
	STATUS_CODE_COUNT
};

struct status_code_def {
	const char *code; /* "class.subject.detail" */
	enum status_class class;
	const char *text; /* RFC 3463's name for it */
};

/* The table's row for `code`; a code outside the enum is fatal. */
const struct status_code_def *status_code_def(enum status_code code);
/* Just its "x.y.z" form. */
const char *status_code_str(enum status_code code);

#endif
