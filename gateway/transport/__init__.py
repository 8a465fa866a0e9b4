"""How clients reach the gateway: the HTTP server, access control before routing, the routes (one router per
interface), the WebSocket channel and the protocols' messages."""
