-- A certificate may be renewed once. A stolen certificate and key then cannot fork a second
-- line of renewals beside the owner's: whichever renews second is refused.
CREATE UNIQUE INDEX certificates_renewed_once ON certificates (renewed_from);
